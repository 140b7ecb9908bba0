"""The benchmark scripts (benchmarks/) run end to end with --quick and write their reports.

Behaviour only, never wall-clock: timings on a shared CI machine are noise, and the scripts report
them as ratios for a human to read. What is checked is that the comparisons are honest: the sampler
variants produce the same samples (asserted inside the script before timing; a variant that differs
must fail), and the OT couplings pair what they claim to (exact LSA = POT's optimum, OT pairs
shorter than independent ones).
"""

import json

import numpy as np
import pytest

from benchmarks import ot_cfm_run, ot_coupling, sampler_scan, sampling_memory


def _read(out, name):
    md = (out / f"{name}.md").read_text()
    with open(out / f"{name}.json") as f:
        data = json.load(f)
    assert "command:" in md and f"benchmarks.{name}" in data["meta"]["command"]
    assert data["meta"]["quick"] is True and data["meta"]["nproc"] >= 1 and data["meta"]["jax"]
    return md, data


def test_sampler_scan_quick(tmp_path):
    res = sampler_scan.main(["--quick", "--out", str(tmp_path)])
    md, data = _read(tmp_path, "sampler_scan")
    assert "host loop / ours" in md and "Same samples" in md
    # Every sampler's variants were checked for equal samples (the script asserts; here: recorded).
    checks = data["equality_checks"]
    assert {c["sampler"] for c in checks} == set(sampler_scan.SAMPLERS)
    assert any("unrolled" in c["variants"] for c in checks)
    assert all(c["max_abs_diff"] <= sampler_scan.ATOL + 10 * sampler_scan.RTOL for c in checks)
    assert {(r["sampler"], r["batch"]) for r in res["run"]} == {
        (s, b) for s in sampler_scan.SAMPLERS for b in (8, 64)
    }
    assert all(r["ours"] > 0 and r["host_loop"] > 0 for r in data["run"])


def test_sampler_scan_equality_check_is_live():
    """A variant with different samples must fail the check (it is what makes the timing honest)."""
    same = lambda *a: np.zeros((4, 2), np.float32)  # noqa: E731
    assert sampler_scan.check_same_samples("x", {"ours": same, "host_loop": same}, None, None, None) == 0.0
    off = lambda *a: np.full((4, 2), 1e-3, np.float32)  # noqa: E731
    with pytest.raises(AssertionError, match="host_loop != ours"):
        sampler_scan.check_same_samples("x", {"ours": same, "host_loop": off}, None, None, None)


def test_ot_coupling_quick(tmp_path):
    res = ot_coupling.main(["--quick", "--out", str(tmp_path)])
    md, data = _read(tmp_path, "ot_coupling")
    assert "vs independent" in md and "ot.emd" in md
    rows = {r["coupling"]: r for r in res["rows"]}
    assert set(rows) == set(ot_coupling.COUPLINGS)
    assert rows["independent"]["ratio_to_independent"] == 1.0
    assert all(r["step_s"] > 0 for r in rows.values())
    assert all(rows[c]["host_pairing_s"] > 0 for c in ("exact_prefetch", "exact_inline", "exact_emd"))
    d = data["checks"][0]["mean_sq_pair_distance"]
    assert d["exact"] == pytest.approx(d["exact_emd_cost"], rel=1e-5)
    assert d["exact"] < d["sinkhorn"] < d["independent"]
    assert [r["batch"] for r in data["solvers"]] == [32, 128] and "scipy / emd" in md
    assert all(r["emd"] > 0 and r["lsa"] > 0 for r in data["solvers"])
    assert all(r["csgraph"] > 0 for r in data["solvers"])  # both batches are <= CSGRAPH_MAX_BATCH
    (bound,) = data["bound"]  # max(independent, pairing / cores) / independent
    pairing = min(rows[c]["host_pairing_s"] for c in ("exact_prefetch", "exact_inline"))
    want = max(1.0, pairing / bound["cores"] / rows["independent"]["step_s"])
    assert bound["bound_ratio"] == pytest.approx(want) and "Lower bound" in md


def test_torchcfm_pairs_are_a_permutation_for_uniform_batches():
    """With equal uniform weights ot.emd's plan is a permutation / B, so torchcfm's sampled pairs are
    (with replacement) optimal pairs: each drawn (x, noise) pair is one of the LSA pairs."""
    from diffusion_jax.couplings import exact_ot_pairing

    rng = np.random.default_rng(0)
    x, noise = rng.standard_normal((32, 2)), rng.standard_normal((32, 2))
    xs, ns = ot_coupling.torchcfm_emd_pairs(x, noise, rng)
    perm = exact_ot_pairing(x, noise)
    for a, b in zip(xs, ns, strict=True):
        i = int(np.flatnonzero((x == a).all(1))[0])
        np.testing.assert_array_equal(b, noise[perm[i]])


def test_train_step_quick(tmp_path):
    import jax

    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    from benchmarks import train_step

    res = train_step.main(["--quick", "--out", str(tmp_path)])
    md, _ = _read(tmp_path, "train_step")
    assert "8 simulated devices vs 1" in md
    (row,) = res["rows"]
    # Same training run on 1 and 8 devices (asserted in the script; recorded here).
    assert row["max_abs_param_diff"] <= 1e-4 and row["step_s_1"] > 0 and row["step_s_8"] > 0


def test_likelihood_quick(tmp_path):
    """Each method runs at the loosest tolerance that reaches the accuracy target (equal accuracy)."""
    from benchmarks import likelihood

    res = likelihood.main(["--quick", "--out", str(tmp_path)])
    md, _ = _read(tmp_path, "likelihood")
    assert "scipy / this" in md
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == set(likelihood.METHODS)
    assert all(r["max_err"] <= res["target"] and r["seconds"] > 0 for r in rows.values())
    assert set(res["field_ms"]) == {"velocity", "velocity + divergence"} and "ms / NFE" in md
    assert all(v > 0 for v in res["field_ms"].values())
    # the chosen tolerance is the loosest that passes: every looser one in the sweep missed the target
    for m, r in rows.items():
        looser = [s for s in res["sweep"] if s["method"] == m and s["tol"] > r["tol"]]
        assert all(s["max_err"] > res["target"] for s in looser)


@pytest.mark.heavy  # two 8-device train steps compiled (tests/conftest.py)
def test_throughput_quick(tmp_path):
    from benchmarks import throughput

    res = throughput.main(["--quick", "--out", str(tmp_path)])
    md, _ = _read(tmp_path, "throughput")
    assert "MFU" in md and "measured matmul" in md
    assert [r["model"] for r in res["rows"]] == list(throughput.QUICK_MODELS)
    for r in res["rows"]:
        assert r["flops_per_step"] > 0 and r["images_per_s"] > 0 and 0 < r["mfu"] < 1
    assert throughput.vendor_peak("TPU v5 lite") == 197e12 and throughput.vendor_peak("TPU v5p") == 459e12
    assert throughput.vendor_peak("NVIDIA H100 80GB HBM3") == 989e12 and throughput.vendor_peak("cpu") is None


def test_ot_cfm_run_quick(tmp_path):
    """Both whole runs (torchcfm's README loop, our training loop with exact OT) complete and report."""
    pytest.importorskip("torchcfm")
    res = ot_cfm_run.main(["--quick", "--out", str(tmp_path)])
    md, data = _read(tmp_path, "ot_cfm_run")
    assert "torchcfm / ours (wall)" in md
    assert set(data["rows"]) == {"torchcfm", "ours"} and res["steps"] == 20 and res["batch"] == 64
    assert all(np.isfinite(r["last_loss"]) and r["wall_s"] > 0 for r in data["rows"].values())


def test_sampling_memory_quick(tmp_path):
    """The four sampling processes (streaming / collect-then-write x two sizes) run, write the same
    sample for a seed (asserted inside), and produce the table rows."""
    res = sampling_memory.main(["--quick", "--out", str(tmp_path)])
    md, data = _read(tmp_path, "sampling_memory")
    assert "streaming (ours)" in md and "collect, then write" in md and "N=64 / N=16" in md
    assert set(data["peak_rss_mb"]) == {"ours_16", "ours_64", "collect_16", "collect_64"}
    assert all(v > 50 for v in res["peak_rss_mb"].values())  # a Python + jax process, in MB
    assert res["ratio_ours"] > 0 and res["ratio_collect"] > 0
