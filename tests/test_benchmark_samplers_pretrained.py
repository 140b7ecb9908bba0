"""experiments.benchmark_samplers on a pretrained config (`experiments/sampler_fid.py`): one FID row
per sampler x grid x NFE from the engine's samples, equal to the FID recomputed by hand; resumable by
row and by seed segment; a 2-process (gloo) run gives the 1-process table and the same samples."""

import json
import os
import sys

import numpy as np
import portpicker
import pytest

from diffusion_jax.convert import pretrained
from diffusion_jax.metrics import fid, inception
from experiments import benchmark_samplers, sampler_fid
from tests.multiproc import run_processes

QUICK = ["--config=configs/pretrained/dit_xl2.py:tiny", "--quick", "--features=pixels", "--grids=leading",
         "--samplers=ddim,dpmpp_2m", "--nfe=3", "--num_samples=10", "--segment=6", "--digests"]  # fmt: skip


def _rows(out):
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def _pixel_stats(plan, seeds):
    """Independent recomputation: engine samples -> VAE -> 8-bit [0, 1] -> 2x2-pooled 16x16 pixels."""
    x = inception.to_unit_interval(np.asarray(plan.decode(plan.sample(seeds))))
    f = x.reshape(len(x), 8, 2, 8, 2, 3).mean((2, 4)).reshape(len(x), -1).astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The 1-process --quick run (8 devices), made once per worker for both tests below. The resume
    test re-runs it in place and leaves the same rows and digests behind."""
    out = str(tmp_path_factory.mktemp("bench") / "one")
    argv = ["prog", *QUICK, f"--out={out}"]
    assert benchmark_samplers.is_pretrained_request(argv)
    assert sampler_fid.main(argv) == 0
    return out


def test_fid_rows_equal_a_hand_computation_and_resume(one_process):
    """Rows of the --quick run on the random tiny DiT + VAE: FID equals numpy's Frechet distance of
    hand-computed statistics; a re-run recomputes nothing; a lost segment is the only one redone."""
    out = one_process
    argv = ["prog", *QUICK, f"--out={out}"]
    rows = _rows(out)
    assert [(r["sampler"], r["nfe"], r["steps"]) for r in rows] == [("ddim", 3, 2), ("dpmpp_2m", 3, 2)]
    from configs.pretrained import dit_xl2

    cfg = dit_xl2.get_config("tiny")
    cfg.pretrained.denoiser.path = os.path.join(out, "quick_models", "p0", "dit_tiny.safetensors")
    cfg.pretrained.autoencoder.path = os.path.join(out, "quick_models", "p0", "vae_tiny.safetensors")
    ref = _pixel_stats(
        pretrained.make_plan(cfg), list(range(sampler_fid.REFERENCE_SEED, sampler_fid.REFERENCE_SEED + 10))
    )
    for r in rows:
        plan = pretrained.make_plan(sampler_fid.variant(cfg, r["sampler"], "leading", 2))
        want = fid.frechet_distance(*_pixel_stats(plan, list(range(10))), *ref)
        print(f"{r['sampler']}: benchmark FID {r['fid']:.6f}, by hand {want:.6f}")
        assert np.isclose(r["fid"], want, rtol=1e-4), (r["fid"], want)
    assert sampler_fid.main(argv) == 0  # resumed: nothing recomputed, nothing appended
    assert len(_rows(out)) == 2
    assert "| ddim | leading | 3 | 2 |" in open(os.path.join(out, "results.md")).read()
    # seed-level resume: drop the results and the second segment of the ddim row only
    parts = os.path.join(out, "parts", rows[0]["row"])
    seg0, seg1 = (os.path.join(parts, f"seg{k:05d}_6.npz") for k in (0, 1))
    before = os.stat(seg0).st_mtime_ns
    os.remove(seg1)
    os.remove(os.path.join(out, "results.jsonl"))
    assert sampler_fid.main(argv) == 0
    again = _rows(out)
    assert os.stat(seg0).st_mtime_ns == before and os.path.isfile(seg1)
    assert [r["fid"] for r in again] == pytest.approx([r["fid"] for r in rows], rel=1e-12)
    with open(os.path.join(out, "digests", f"{rows[0]['row']}.p0.json")) as f:
        assert sorted(json.load(f), key=int) == [str(s) for s in range(10)]  # the resumed seeds merged in


def test_two_processes_give_the_one_process_table(one_process, tmp_path):
    """2 processes x 2 CPU devices (gloo): 10 seeds in chunks of 4 are 3 chunks, so the processes
    draw 2 and 1 (and 1 and 0 in the second segment); the feature moments are reduced, not gathered.
    Same FID per row (float tolerance) and the same sample bits per seed as 1 process x 8 devices."""
    one, two = one_process, str(tmp_path / "two")
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "experiments.benchmark_samplers", *QUICK, f"--out={two}",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--num_cpu_devices=2",
           "--cpu_collectives=gloo"]  # fmt: skip
    run_processes([[*cmd, f"--process_id={pid}"] for pid in range(2)], env, timeout=600)
    r1, r2 = _rows(one), _rows(two)
    assert [r["row"] for r in r1] == [r["row"] for r in r2] and [r["processes"] for r in r2] == [2, 2]
    for a, b in zip(r1, r2, strict=True):
        print(f"{a['sampler']}: FID 1 process {a['fid']:.9f}, 2 processes {b['fid']:.9f}")
        assert b["fid"] == pytest.approx(a["fid"], rel=1e-5)  # float32 features, other reduction order
        with open(os.path.join(one, "digests", f"{a['row']}.p0.json")) as f:
            d1 = json.load(f)
        d2 = {}
        for p in range(2):
            with open(os.path.join(two, "digests", f"{a['row']}.p{p}.json")) as f:
                part = json.load(f)
            assert not set(part) & set(d2)  # each seed drawn by one process
            d2.update(part)
        assert sorted(d1, key=int) == [str(s) for s in range(10)] and d1 == d2


def test_defaults_to_the_eval_files_and_names_a_missing_one(tmp_path, capsys):
    """Without --inception / --reference the benchmark uses the config's eval.inception_weights /
    eval.reference_stats (the files `evaluate` uses); a missing one is a one-line error before compiling."""
    inc = tmp_path / "inc.npz"
    argv = ["prog", "--config=configs/pretrained/dit_xl2.py:256", f"--config.eval.inception_weights={inc}",
            f"--out={tmp_path / 'out'}"]  # fmt: skip
    assert sampler_fid.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: eval.inception_weights='{inc}' not found") and "\n" not in err
    assert "python -m diffusion_jax.metrics.inception_weights" in err
    inc.write_bytes(b"")  # exists; the config's reference statistics do not
    assert sampler_fid.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "eval.reference_stats='checkpoints/reference/VIRTUAL_imagenet256_labeled.npz' not found" in err
    assert sampler_fid.main([*argv, "--samplers=ddim,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
