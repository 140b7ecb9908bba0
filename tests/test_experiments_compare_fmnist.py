"""Issue 13 section 2 on Fashion-MNIST (`experiments/compare_formulations.py --part=fmnist`): the
--quick mode (the configs' 'tiny' variant: 8x8 images, nf 8, 2 training steps in-process, n = 16, a
randomly initialised classifier), one shared run (module fixture).

Real properties, each independent of the code's own earlier output:
  * the floor (n train vs the same n test images) equals the Frechet distance computed here with
    scipy's `sqrtm` on features this test extracts itself, from images it resizes itself (PIL BOX);
  * real test images scored against themselves give a distance of ~0, far below the floor, and the
    samples of a 2-step model are farther from the test images than the train images are (> floor);
  * the NFE column is the samplers' rule (Euler N, DPM-Solver++ 2M N) and `--max_nfe` skips Heun
    (2N = 4 > 3) before sampling.
Cost: one 2-step training and two sampling programs of the tiny U-Net (the suite's time budget).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from diffusion_jax.data import fashion_mnist
from experiments import compare_formulations as cf

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(fashion_mnist.DEBIAN_DIR, "train-images-idx3-ubyte.gz")),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)

FORM = "rf_logit_normal"
N = cf.QUICK["fmnist"]["n"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compare_fmnist"))
    argv = [
        "--quick",
        "--part=fmnist",
        f"--formulations={FORM}",
        "--max_nfe=3",
        f"--out={out}",
    ]
    rows = cf.main(argv)["fmnist"]
    return out, rows


def _frechet_scipy(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_table_nfe_rules_and_files(quick):
    out, rows = quick
    assert [(r["sampler"], r["steps"]) for r in rows] == [(s, 2) for s in cf.FIXED_SAMPLERS]
    for r in rows:
        assert r["dataset"] == "fashion_mnist" and r["kind"] == "FD" and r["formulation"] == FORM
        if r["sampler"] == "heun":  # NFE 2N = 4 > --max_nfe=3: skipped before sampling
            assert "--max_nfe=3" in r["error"] and r["NFE"] == "-", r
            continue
        assert r["NFE"] == r["steps"] and not r["error"] and np.isfinite(r["metric"]), r
    md = open(os.path.join(out, "fmnist.md")).read()
    assert "| formulation | euler N=2 | heun N=2 | dpmpp_2m N=2 |" in md
    for png in ("fmnist_fashion_mnist_FD.png", "fmnist_samples.png"):
        assert os.path.getsize(os.path.join(out, png)) > 1000
    assert cf.read_csv(os.path.join(out, "fmnist.csv"))[0]["metric"] == pytest.approx(rows[0]["metric"])


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # n = 16 < 128 features: singular
def test_floor_is_the_scipy_frechet_distance_and_samples_score_above_it(quick):
    _, rows = quick
    from flax import nnx

    from diffusion_jax.metrics import classifier

    def imgs(split):  # the tiny variant's 8x8 area (PIL BOX) resize, done here independently
        x = fashion_mnist.load_split_numpy(split)[0][:N]
        x = x.reshape(N, 28, 28)
        return np.stack([np.asarray(Image.fromarray(im).resize((8, 8), Image.BOX)) for im in x])[..., None]

    fn = jax.jit(classifier.feature_fn(*nnx.split(classifier.create(0))))
    f_train, f_test = (np.asarray(fn(imgs(s)), np.float64) for s in ("train", "test"))
    floor = rows[0]["floor"]
    assert floor == pytest.approx(_frechet_scipy(f_train, f_test), rel=1e-3)
    score, floor2 = cf.fmnist_scorer(None, N, 8, "area")
    assert floor2 == pytest.approx(floor, rel=1e-6)
    same = score(imgs("test").astype(np.float32) / 127.5 - 1.0)  # the test images themselves
    assert abs(same) < 1e-3 * floor
    for r in rows:
        if not r["error"]:
            assert r["metric"] > floor, r


def test_likelihood_reads_a_comparison_run(quick, tmp_path):
    """Reproduction 3e scores a comparison run (`--run`): its EMA denoiser and image size, the test
    images brought to that size as its data pipeline does; a folder that is not a run fails early."""
    from experiments import reproduce_likelihood as RL

    out, _ = quick
    den, desc = RL.load_fmnist_run(os.path.join(out, "runs", f"fmnist_{FORM}"))
    assert desc["steps"] == cf.QUICK["fmnist"]["train_steps"] and desc["image_size"] == 8
    assert desc["resize"] == "area" and desc["prediction"] == "velocity"
    with pytest.raises(SystemExit, match="--run"):
        RL.main([f"--out={tmp_path}/x", f"--run={tmp_path}"])
    assert not (tmp_path / "x").exists()


def test_settings_list_parses_and_refuses_bad_items(tmp_path, capsys):
    assert cf.parse_settings("euler:5,heun:3,dopri5:0.01") == (("euler", 5), ("heun", 3), ("dopri5", 0.01))
    for bad in ("rk4:5", "euler:0", "heun"):
        with pytest.raises(ValueError, match="euler"):
            cf.parse_settings(bad)
    with pytest.raises(SystemExit):
        cf.main(["--part=toy", "--settings=euler:-1", f"--out={tmp_path}/x"])
    assert "--settings" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_merge_from_joins_results_evaluated_apart(quick, tmp_path):
    """Two folders evaluated apart (here: the quick run's, and a copy of it relabelled as another
    formulation) merge into one csv / table / sample grid in FORMULATIONS order; a formulation in
    both folders is refused, and --merge_from without --report_only fails before any work."""
    out, rows = quick
    other = tmp_path / "other"
    other.mkdir()
    cf.write_csv(str(other / "fmnist.csv"), [{**r, "formulation": "vp_eps"} for r in rows])
    with np.load(os.path.join(out, "fmnist_samples.npz")) as z:
        np.savez(other / "fmnist_samples.npz", vp_eps=z[FORM], **{cf.REAL_KEY: z[cf.REAL_KEY]})
    merged = tmp_path / "merged"
    argv = ["--quick", "--part=fmnist", f"--out={merged}", "--report_only", f"--merge_from={out},{other}"]
    got = cf.main(argv)["fmnist"]
    assert [r["formulation"] for r in got] == ["vp_eps"] * len(rows) + [FORM] * len(rows)
    metric = lambda rs: np.array([np.nan if r["metric"] is None else r["metric"] for r in rs], float)  # noqa: E731
    np.testing.assert_equal(metric(got[len(rows) :]), metric(rows))  # nan (skipped Heun) == nan
    md = open(merged / "fmnist.md").read()
    assert md.index("| vp_eps |") < md.index(f"| {FORM} |")
    with np.load(merged / "fmnist_samples.npz") as z:
        assert list(z.files) == ["vp_eps", FORM, cf.REAL_KEY]
    assert os.path.getsize(merged / "fmnist_samples.png") > 1000
    with pytest.raises(SystemExit, match="is in both"):
        cf.main([*argv[:-1], f"--merge_from={out},{out}"])
    with pytest.raises(SystemExit):
        cf.main(["--quick", "--part=fmnist", f"--out={tmp_path / 'x'}", f"--merge_from={out}"])
    with pytest.raises(SystemExit):  # a folder without fmnist.csv: refused before --out is made
        cf.main(
            [
                "--quick",
                "--part=fmnist",
                f"--out={tmp_path / 'x'}",
                "--report_only",
                f"--merge_from={tmp_path}",
            ]
        )
    assert not os.path.exists(tmp_path / "x")
