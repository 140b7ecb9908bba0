"""Reproduction 3a (experiments/reproduce_cfm.py, experiments/cfm_datasets.py).

Independent references: scikit-learn's make_moons for the runner's arc grid, the closed-form
statistics of the runner's Gaussian rings, scipy's linear_sum_assignment for the exact OT pairs,
and closed-form path energies of constant and linear velocity fields for the NPE integral. A
--quick run (one task, two methods, 60 steps) writes one cell file per run, the table and finite
metrics, and a re-run skips the finished cells.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cfm_datasets as D
from experiments import reproduce_cfm as R


def test_grid_moons_is_sklearns_arc_grid():
    sk = pytest.importorskip("sklearn.datasets")
    n = 1001
    ref, _ = sk.make_moons(n_samples=n, noise=0.0, shuffle=False)
    ref = ref * 2.0
    ref[:, 0] -= 1.0
    ours = D._moons_grid(n, 0.0, np.random.default_rng(0)) * 2.0
    ours[:, 0] -= 1.0
    key = lambda a: a[np.lexsort((a[:, 1], a[:, 0]))]  # noqa: E731  (ours is shuffled)
    np.testing.assert_allclose(key(ours), key(ref), atol=1e-12)
    noisy = D.grid_moons(20_000, np.random.default_rng(1))
    clean = D._moons_grid(20_000, 0.0, np.random.default_rng(1)) * 2.0
    clean[:, 0] -= 1.0
    # same permutation draw, then N(0, 0.05^2) * 2 added: residual std 0.1
    assert abs((noisy - clean).std() - 0.1) < 0.003


def test_runner_rings_have_their_stated_statistics():
    x = D.ring8_std1(80_000, np.random.default_rng(0))
    ang = np.arctan2(x[:, 1], x[:, 0])
    mode = np.round(ang / (2 * math.pi / 8)).astype(int) % 8
    assert len(x) == 80_000
    for k in range(8):  # exactly n / 8 per mode, in blocks; centre 5 (cos, sin), std 1
        blk = x[k * 10_000 : (k + 1) * 10_000]
        a = 2 * math.pi * (k + 1) / 8
        np.testing.assert_allclose(blk.mean(0), [5 * math.cos(a), 5 * math.sin(a)], atol=0.03)
        np.testing.assert_allclose(blk.std(0), [1.0, 1.0], atol=0.02)
    assert np.bincount(mode, minlength=8).min() > 8000
    g = D.dsb_8gaussians(80_000, np.random.default_rng(1))
    r = np.linalg.norm(g, axis=1)
    assert abs(np.median(r) - 12.0) < 0.1  # radius 3 * 4
    m = D.dsb_moons(50_000, np.random.default_rng(2))
    assert abs(m.mean()) < 1e-9 and abs(m.std(ddof=1) - 7.0) < 1e-9  # scalar standardisation x 7
    d = D.task_data("moons_to_8gaussians", 42)
    assert d["train_src"].shape == d["train_tgt"].shape == (10_000, 2) and d["test_tgt"].shape == (1000, 2)
    with pytest.raises(ValueError, match="valid"):
        D.task_data("spirals", 0)


def test_ot_chunks_are_exact_assignments_made_in_prefetch_threads():
    lsa = pytest.importorskip("scipy.optimize").linear_sum_assignment
    from diffusion_jax.training.prefetch import host_batches

    data = D.task_data("gaussian_to_8gaussians", 0)
    raw = next(R._HostChunks(data, 3, 64, np.random.default_rng(0)))
    with host_batches(
        R._HostChunks(data, 3, 64, np.random.default_rng(0)), R.pair_chunk_exact_ot, 0, 2
    ) as it:
        paired = next(it)
    np.testing.assert_array_equal(paired["x"], raw["x"])
    for x, n, n0 in zip(paired["x"], paired["noise"], raw["noise"], strict=True):
        # the same source rows, reordered to the minimum total squared distance (scipy's assignment)
        np.testing.assert_array_equal(np.sort(n, axis=0), np.sort(n0, axis=0))
        cost = ((x[:, None].astype(np.float64) - n0[None]) ** 2).sum(-1)
        r, c = lsa(cost)
        np.testing.assert_allclose(((x - n) ** 2).sum(), cost[r, c].sum(), rtol=1e-5)


def _den(fn):
    from diffusion_jax import schedules as S
    from diffusion_jax.predictions import make_denoiser

    return make_denoiser(lambda p, z, t, c, r: fn(z), S.get_schedule("rectified_flow"), "velocity")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_path_energy_of_closed_form_fields(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        z1 = np.random.default_rng(0).standard_normal((5, 2)).astype(dtype)
        c = jnp.asarray([0.7, -1.3], dtype)
        x, nfe, pe = R.solve(_den(lambda z: jnp.broadcast_to(c, z.shape)), None, z1)
        np.testing.assert_allclose(x, z1 - np.asarray(c), atol=1e-5)  # dz/dt = c from t = 1 to 0
        np.testing.assert_allclose(pe, float(c @ c), rtol=1e-5)
        assert nfe > 1 and (nfe - 1) % 6 == 0
        a = 0.8  # dz/dt = a z: z(t) = z1 e^{a (t - 1)}, PE = a |z1|^2 (1 - e^{-2a}) / 2
        x, _, pe = R.solve(_den(lambda z: a * z), None, z1)
        np.testing.assert_allclose(x, z1 * math.exp(-a), rtol=1e-4)
        ref = a * (z1.astype(np.float64) ** 2).sum(1) * (1 - math.exp(-2 * a)) / 2
        np.testing.assert_allclose(pe, ref, rtol=2e-4)  # trapezoid on 101 points: O(h^2)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cfm"))
    res = R.main(
        ["--quick", f"--out={out}", "--tasks=gaussian_to_moons", "--seeds=42", "--methods=i_cfm,ot_cfm"]
    )
    return res, out


def test_quick_run_writes_cells_and_resumes(quick_run):
    res, out = quick_run
    assert len(res["rows"]) == 2 and res["done"] == 2  # of the 45 cells at the quick protocol
    for r in res["rows"]:
        for w in ("raw", "ema"):
            m = r[w]
            assert m["finite"] and m["w2_1000"] > 0 and m["npe"] >= 0 and (m["nfe"] - 1) % 6 == 0
        assert 0 < r["floor_1000"] < r["raw"]["w2_1000"]  # 60 steps: far from a perfect generator
    cells = sorted(os.listdir(os.path.join(out, "cells")))
    assert cells == [
        "gaussian_to_moons__i_cfm__seed42__steps60_batch64.json",
        "gaussian_to_moons__ot_cfm__seed42__steps60_batch64.json",
    ]
    md = open(os.path.join(out, "cfm_table.md")).read()
    assert "| N -> moons | i_cfm |" in md and "Cells done: 2/45 (" in md
    assert "python -m experiments.reproduce_cfm --out=" in md
    # the published [SF]2M re-run beside ours, and the paired ordering line from the two cells
    assert "| N -> moons | i_cfm | 0.178 ± 0.014 | 0.891 ± 0.120 |" in md
    i_w2, o_w2 = (r["raw"]["w2_1000"] for r in sorted(res["rows"], key=lambda r: r["method"]))
    verdict = "holds" if i_w2 > o_w2 else "does NOT hold"
    assert f"- N -> moons, raw, n = 1000: I-CFM {i_w2:.3f} vs OT-CFM {o_w2:.3f} -> {verdict}" in md
    assert f"paired differences {i_w2 - o_w2:+.3f})" in md
    csv = open(os.path.join(out, "cfm.csv")).read().splitlines()
    assert len(csv) == 3 and csv[0].startswith("task,method,seed")
    assert json.load(open(os.path.join(out, "meta.json")))["steps"] == 60
    # a re-run skips the finished cells (no training: the cell files are untouched) and rebuilds the
    # same table; --report_only rebuilds it from the cells alone
    stamp = [os.path.getmtime(os.path.join(out, "cells", c)) for c in cells]
    again = R.main(
        ["--quick", f"--out={out}", "--tasks=gaussian_to_moons", "--seeds=42", "--methods=i_cfm,ot_cfm"]
    )
    assert again["markdown"] == res["markdown"]
    assert stamp == [os.path.getmtime(os.path.join(out, "cells", c)) for c in cells]
    assert R.main(["--quick", "--report_only", f"--out={out}"])["markdown"] == res["markdown"]


def test_bad_names_fail_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        R.main(["--methods=fm", f"--out={tmp_path}/x"])
    with pytest.raises(SystemExit, match="seeds"):
        R.main(["--seeds=a", f"--out={tmp_path}/x"])
    assert not os.path.exists(tmp_path / "x")
    with pytest.raises(ValueError, match="valid"):
        R.run_config("rf", 10)
