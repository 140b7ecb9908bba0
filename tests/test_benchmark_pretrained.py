"""experiments.benchmark_pretrained --quick on a converted tiny DiT + VAE: one FID row per sampler x
grid x NFE from the engine's samples, resumable from results.jsonl."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusion_jax.convert import pretrained  # noqa: E402
from diffusion_jax.metrics import fid, inception  # noqa: E402
from experiments import benchmark_pretrained as bench  # noqa: E402
from tests.test_convert_sampling import make_tiny_pretrained  # noqa: E402


def test_quick_fid_table_and_resume(tmp_path):
    _, _, cfg = make_tiny_pretrained(str(tmp_path / "models"))
    out = str(tmp_path / "bench")
    argv = ["prog", "--config=configs/pretrained/dit_xl2.py:tiny",
            f"--config.pretrained.denoiser.path={cfg.pretrained.denoiser.path}",
            f"--config.pretrained.autoencoder.path={cfg.pretrained.autoencoder.path}",
            "--samplers=ddim,dpmpp_2m", "--grids=leading", "--nfe=3", "--num_samples=6", "--quick", "--features=pixels", f"--out={out}"]  # fmt: skip
    assert bench.main(argv) == 0
    with open(os.path.join(out, "results.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [(r["sampler"], r["nfe"], r["steps"]) for r in rows] == [("ddim", 3, 2), ("dpmpp_2m", 3, 2)]
    # the ddim row recomputed by hand: engine samples -> VAE -> 8-bit -> 2x2-pooled pixels -> Frechet
    plan = pretrained.make_plan(bench._variant(cfg, "ddim", "leading", 2))
    ref_plan = pretrained.make_plan(cfg)

    def stats(p, seeds):
        x = inception.to_unit_interval(np.asarray(p.decode(p.sample(seeds))))
        f = x.reshape(len(x), 8, 2, 8, 2, 3).mean((2, 4)).reshape(len(x), -1)  # 16x16 -> 8x8 pooled
        return f.mean(0), np.cov(f, rowvar=False)

    ref = stats(ref_plan, list(range(bench.REFERENCE_SEED, bench.REFERENCE_SEED + 6)))
    want = fid.frechet_distance(*stats(plan, list(range(6))), *ref)
    assert np.isclose(rows[0]["fid"], want, rtol=1e-3), (rows[0]["fid"], want)
    assert bench.main(argv) == 0  # resumed: nothing recomputed, nothing appended
    with open(os.path.join(out, "results.jsonl")) as f:
        assert len(f.readlines()) == 2
    assert "| ddim | leading | 3 | 2 |" in open(os.path.join(out, "results.md")).read()


def test_defaults_to_the_eval_files_and_names_a_missing_one(tmp_path, capsys):
    """Without --inception / --reference the benchmark uses the config's eval.inception_weights /
    eval.reference_stats (the files `evaluate` uses); a missing one is a one-line error before compiling."""
    inc = tmp_path / "inc.npz"
    argv = ["prog", "--config=configs/pretrained/dit_xl2.py:256", f"--config.eval.inception_weights={inc}",
            f"--out={tmp_path / 'out'}"]  # fmt: skip
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: eval.inception_weights='{inc}' not found") and "\n" not in err
    assert "python -m diffusion_jax.metrics.inception_weights" in err
    inc.write_bytes(b"")  # exists; the config's reference statistics do not
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "eval.reference_stats='checkpoints/reference/VIRTUAL_imagenet256_labeled.npz' not found" in err
    assert not os.path.exists(tmp_path / "out")
