r"""Training-step cost of the noise-data couplings of flow matching, on the 2-D toy MLP.

OT-CFM (Tong et al. 2024, "Improving and generalizing flow-based generative models with minibatch
optimal transport", TMLR; also Pooladian et al. 2023) re-pairs each minibatch of data with its noise
by an optimal-transport plan before the flow-matching loss. That pairing must not stall training:
DESIGN.md ("Training objective") asks for Sinkhorn in-graph (ott-jax) or an exact assignment
computed on the host in the input pipeline. This benchmark measures what each choice costs per step
against plain independent pairs (I-CFM), with everything else identical: the library's own train
step (`training.loop.build_runtime`: loss, Adam, EMA, non-finite guard) for the `toy2d` config
(torchcfm's 3 x 64 SELU MLP, 8 Gaussians data), one device, float32.

Couplings (rows of the table):

* ``independent``: noise drawn in-graph, no pairing (the reference, ratio 1).
* ``sinkhorn (in-graph)``: objective coupling ``ot_sinkhorn`` with its defaults (ott-jax Sinkhorn,
  epsilon 0.05 relative to the mean cost, at most 200 iterations, pairs sampled from the plan; Tong
  et al. 2024 Alg. 3), inside the jitted step.
* ``exact permutation (host, ours)``: objective coupling ``ot_exact`` fed by the library's
  input-pipeline helper `couplings.pair_batch_exact_ot` (noise drawn with numpy, the optimal
  permutation from the fastest exact solver for the batch size, `couplings.exact_ot_pairing`), with
  step k's randomness seeded by k as in `training.loop`. Two rows: *inline* (the pairing runs on the
  main thread between two dispatches, in series with the device step), and *prefetched*: through
  `training.prefetch.Prefetcher` exactly as the training loop feeds its steps (default
  ``training.prefetch = 2``: batches k + 1, k + 2 paired in two background threads while step k
  runs; POT's simplex releases the GIL). Unlike torchcfm's sampled pairs it is a true coupling.
* ``exact ot.emd (host, torchcfm)``: torchcfm's `OTPlanSampler(method="exact")` transcribed: the
  squared-Euclidean cost matrix, POT's network simplex `ot.emd` (Bonneel et al. 2011), then B pairs
  drawn from the flattened B x B plan with `np.random.choice` (torchcfm's `sample_map`). This is the
  host pattern the exact-OT literature code uses.

How it is timed: a loop of `--steps` train steps, dispatched asynchronously and blocked once at the
end (as the real training loop runs); the median over interleaved repeats, divided by the steps.
A prefetcher is started inside each timed loop, so its first pairing is paid in series. Data batches are drawn before
timing (the same for every coupling); noise drawn on the host is part of a host coupling's cost.
The host-only pairing time per batch is reported too. On this CPU "device" and "host" share the same
(two) cores, so the overlap an accelerator host would give is only partly there.

A second table times the two exact solvers alone (POT's network simplex `ot.emd` and scipy's
`linear_sum_assignment`) on the same batches, asserting the same optimal cost: it is where
`couplings.LSA_MAX_BATCH`, the size below which `exact_ot_pairing` uses scipy, comes from.

Sanity checks (asserted, not timed): both exact methods reach the same minimal transport cost (they
solve the same problem), and the Sinkhorn and exact pairings have lower mean squared pair distance
than independent pairs.

    .venv/bin/python -m benchmarks.ot_coupling            # default, ~1-2 min on 2 shared cores
    .venv/bin/python -m benchmarks.ot_coupling --quick    # tiny sizes, a smoke test
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C
from diffusion_jax import couplings
from diffusion_jax.training.build import FAST_COMPILE

NAME = "ot_coupling"
DATASET = "8gaussians"
COUPLINGS = ("independent", "sinkhorn", "exact_prefetch", "exact_inline", "exact_emd")
LABELS = {
    "independent": "independent (I-CFM)",
    "sinkhorn": "sinkhorn (in-graph, ott-jax)",
    "exact_prefetch": "exact permutation (host, ours: prefetched, as training.loop runs it)",
    "exact_inline": "exact permutation (host, ours, inline: in series with the step)",
    "exact_emd": "exact ot.emd (host, torchcfm pattern, inline)",
}
OBJECTIVE_COUPLING = {
    "independent": "independent",
    "sinkhorn": "ot_sinkhorn",
    "exact_prefetch": "ot_exact",
    "exact_inline": "ot_exact",
    "exact_emd": "ot_exact",
}
PREFETCH = 2  # training.prefetch's default


def torchcfm_emd_pairs(x: np.ndarray, noise: np.ndarray, rng: np.random.Generator) -> tuple:
    """torchcfm's exact OT-CFM pairing (`OTPlanSampler.sample_plan`, method 'exact'), in numpy.

    M = ||x0_i - x1_j||^2 (torchcfm: `torch.cdist(x0, x1) ** 2`), pi = ot.emd(unif, unif, M), then B
    index pairs drawn with replacement from the flattened plan. Returns (x[i], noise[j]).
    """
    import ot

    b = x.shape[0]
    cost = ot.dist(noise.astype(np.float64), x.astype(np.float64))  # squared Euclidean
    pi = ot.emd(ot.unif(b), ot.unif(b), cost)
    p = pi.flatten()
    choices = rng.choice(b * b, p=p / p.sum(), size=b, replace=True)
    j, i = np.divmod(choices, b)
    return x[i], noise[j]


def make_config(coupling: str, batch: int, fast_compile: bool = False):
    """The toy2d rectified-flow config with the coupling under test (everything else fixed).
    `fast_compile` (XLA's low optimisation level, `training.fast_compile`) is for --quick only: it
    cuts compile time but the step runs slower, so it is never used for a measurement."""
    from configs.toy2d import common

    cfg = common.make("rf_uniform", DATASET)
    cfg.data.batch_size = batch
    cfg.objective.coupling = OBJECTIVE_COUPLING[coupling]
    cfg.training.fast_compile = fast_compile
    return cfg


def coupling_step(rt, cfg):
    """The jitted train step of `cfg` on runtime `rt`'s mesh, network and state layout: the rest of
    `training.loop.build_runtime`, so the network and state are built (and compiled) once and the
    couplings differ only in their objective."""
    from diffusion_jax.training.build import FAST_COMPILE, build_loss
    from diffusion_jax.training.state import make_optimizer
    from diffusion_jax.training.step import jit_train_step, make_train_step

    loss_fn, _ = build_loss(cfg, rt.network.net_fn)
    step = make_train_step(loss_fn, make_optimizer(cfg.training), cfg.training)
    opts = FAST_COMPILE if cfg.training.fast_compile else None
    return jit_train_step(step, rt.mesh, rt.state_sharding, rt.batch_sharding, opts)


class PoolIterator:
    """Batch k = pool[k % len(pool)] as {'x': ...}; the data-iterator interface the loop reads."""

    def __init__(self, pool: np.ndarray, start: int):
        self.pool, self.k = pool, start

    def __next__(self) -> dict:
        self.k += 1
        return {"x": self.pool[(self.k - 1) % len(self.pool)]}

    def get_state(self):
        return {"step": self.k}


def host_transform(coupling: str, seed: int) -> Callable[[dict, int], dict]:
    """`fn(batch, k)`: the host work of step k for `coupling` (pairing with noise drawn from a
    generator seeded by (seed, k), as `training.loop` does), the identity for in-graph couplings."""
    if coupling in ("independent", "sinkhorn"):
        return lambda batch, k: batch
    if coupling in ("exact_prefetch", "exact_inline"):
        return lambda batch, k: couplings.pair_batch_exact_ot(batch, np.random.default_rng([seed, k]))

    def emd(batch, k):
        rng = np.random.default_rng([seed, k])
        x = batch["x"]
        xs, ns = torchcfm_emd_pairs(x, rng.standard_normal(x.shape).astype(x.dtype), rng)
        return {"x": xs, "noise": ns}

    return emd


def host_feed(pool: np.ndarray, coupling: str, seed: int, start: int):
    """The batches of steps start, start + 1, ...: prefetched in threads for 'exact_prefetch'
    (`training.prefetch.Prefetcher`, as the loop), else prepared inline. Close it after use."""
    from diffusion_jax.training.prefetch import host_batches

    depth = PREFETCH if coupling == "exact_prefetch" else 0
    return host_batches(PoolIterator(pool, start), host_transform(coupling, seed), start, depth)


def time_solvers(batches: Sequence[int], repeats: int, seed: int = 0) -> list[dict]:
    """Median host time of each exact solver (`exact_ot_pairing` with method 'emd' / 'lsa') per batch
    size on 8-Gaussians data vs standard normal noise; asserts both reach the same total cost."""
    from diffusion_jax.data.toy2d import sample_toy

    rows = []
    for b in batches:
        x = np.asarray(sample_toy(DATASET, jax.random.key(seed), b), np.float64)
        noise = np.random.default_rng(seed).standard_normal(x.shape)
        cost = ((x[:, None] - noise[None]) ** 2).sum(-1)
        rec = {"batch": b}
        totals = {}
        for method in ("emd", "lsa"):
            perm = couplings.exact_ot_pairing(x, noise, method)
            totals[method] = cost[np.arange(b), perm].sum()
            rec[method] = statistics.median(
                C.timed(lambda m=method: couplings.exact_ot_pairing(x, noise, m)) for _ in range(repeats)
            )
        np.testing.assert_allclose(totals["emd"], totals["lsa"], rtol=1e-9, err_msg="solvers disagree")
        rec.update(_other_solvers(cost, repeats))
        rec["auto"] = "lsa" if b <= couplings.LSA_MAX_BATCH else "emd"
        rows.append(rec)
        print(f"B={b} solvers: emd {1e3 * rec['emd']:.3g} ms, lsa {1e3 * rec['lsa']:.3g} ms")
    return rows


CSGRAPH_MAX_BATCH = 256  # scipy's sparse LAPJVsp is ~100x slower than the others on dense costs


def _other_solvers(cost: np.ndarray, repeats: int) -> dict:
    """Median seconds of the other exact solver in our dependencies on the same cost matrix, asserted
    to reach the optimum of `linear_sum_assignment`: scipy's `min_weight_full_bipartite_matching`
    (LAPJVsp, on the dense cost; only up to `CSGRAPH_MAX_BATCH`). (POT 0.9.7's `ot.emd` ignores its
    `numThreads`: its network simplex no longer uses OpenMP, so there is no threaded variant.)"""
    import scipy.optimize
    import scipy.sparse
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    b = len(cost)
    r, c = scipy.optimize.linear_sum_assignment(cost)
    best = cost[r, c].sum()
    out = {"csgraph": None}
    if b <= CSGRAPH_MAX_BATCH:
        graph = lambda: min_weight_full_bipartite_matching(scipy.sparse.csr_matrix(cost + 1.0))  # noqa: E731
        r2, c2 = graph()  # + 1: an explicit zero would be a missing edge
        np.testing.assert_allclose(cost[r2, c2].sum(), best, rtol=1e-9)
        out["csgraph"] = statistics.median(C.timed(graph) for _ in range(repeats))
    return out


def check_couplings(x: np.ndarray, seed: int = 0) -> dict:
    """Mean squared pair distance of each coupling on one batch; asserts our exact permutation and ot.emd reach
    the same minimal cost and that OT pairings are shorter than independent ones."""
    import ot

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    indep = float(np.mean(np.sum((x - noise) ** 2, -1)))
    perm = couplings.exact_ot_pairing(x, noise)
    exact = float(np.mean(np.sum((x - noise[perm]) ** 2, -1)))
    emd2 = float(
        ot.emd2(ot.unif(len(x)), ot.unif(len(x)), ot.dist(x.astype(np.float64), noise.astype(np.float64)))
    )
    np.testing.assert_allclose(
        exact, emd2, rtol=1e-5, err_msg="exact permutation and ot.emd2 disagree on the OT cost"
    )
    # Not timed: XLA's fast-compile options (same values) save a second of compilation.
    idx = jax.jit(couplings.sinkhorn_pairing, compiler_options=FAST_COMPILE)(
        jax.random.key(seed), jnp.asarray(x), jnp.asarray(noise)
    )
    sink = float(np.mean(np.sum((x - noise[np.asarray(idx)]) ** 2, -1)))
    xs, ns = torchcfm_emd_pairs(x, noise, rng)
    emd_sampled = float(np.mean(np.sum((xs - ns) ** 2, -1)))
    assert exact < sink < indep, (exact, sink, indep)
    assert emd_sampled < indep, (emd_sampled, indep)
    return {
        "independent": indep,
        "exact": exact,
        "exact_emd_cost": emd2,
        "exact_emd": emd_sampled,
        "sinkhorn": sink,
    }


def run(args) -> dict:
    from diffusion_jax.data.toy2d import sample_toy
    from diffusion_jax.training.loop import build_runtime

    dev = jax.devices()[:1]
    rows, checks = [], []
    for batch in args.batches:
        draw = jax.jit(lambda k, b=batch: sample_toy(DATASET, k, b), compiler_options=FAST_COMPILE)
        pool = np.stack([np.asarray(draw(jax.random.key(i))) for i in range(args.pool)])
        checks.append({"batch": batch, "mean_sq_pair_distance": check_couplings(pool[0])})

        loops, compile_s, host_s = {}, {}, {}
        rt = build_runtime(make_config("independent", batch, fast_compile=args.quick), devices=dev)
        for c in COUPLINGS:
            step_fn = coupling_step(rt, make_config(c, batch, fast_compile=args.quick))
            transform = host_transform(c, seed=batch)
            # A fresh copy per coupling: the step donates (deletes) the state it is given.
            state = jax.device_put(jax.tree.map(np.array, rt.host_state), rt.state_sharding)
            t0 = time.perf_counter()
            compiled = step_fn.lower(state, transform({"x": pool[0]}, 0)).compile()
            compile_s[c] = time.perf_counter() - t0
            box = {"state": state, "k": 0}

            def loop(c=c, box=box, compiled=compiled, batch=batch):
                state, metrics = box["state"], None
                with host_feed(pool, c, seed=batch, start=box["k"]) as feed:
                    for _ in range(args.steps):
                        state, metrics = compiled(state, next(feed))
                box["state"], box["k"] = state, box["k"] + args.steps
                return metrics

            metrics = C.block(loop())  # warm-up; the loss must be finite
            assert np.isfinite(float(metrics["loss"])), (c, batch, metrics)
            loops[c] = loop
            if c.startswith("exact"):
                host_s[c] = statistics.median(
                    C.timed(lambda k=k, fn=transform: fn({"x": pool[k % len(pool)]}, k))
                    for k in range(max(3, args.repeats))
                )
        t = C.median_interleaved(loops, args.repeats)
        for c in COUPLINGS:
            rec = {
                "batch": batch,
                "coupling": c,
                "step_s": t[c] / args.steps,
                "ratio_to_independent": t[c] / t["independent"],
                "compile_s": compile_s[c],
                "host_pairing_s": host_s.get(c),
            }
            rows.append(rec)
            print(f"B={batch} {c}: {1e3 * rec['step_s']:.3g} ms/step, x{rec['ratio_to_independent']:.2f}")
    res = {"rows": rows, "checks": checks, "solvers": time_solvers(args.solver_batches, args.repeats)}
    res["bound"] = lower_bound(res)
    return res


def report(res: dict, args) -> list[str]:
    rows = [
        [
            r["batch"],
            LABELS[r["coupling"]],
            C.fmt_ms(r["step_s"]),
            C.fmt_ratio(r["ratio_to_independent"]),
            "-" if r["host_pairing_s"] is None else C.fmt_ms(r["host_pairing_s"]),
            f"{r['compile_s']:.1f}",
        ]
        for r in res["rows"]
    ]
    table = (
        "## Time per train step\n\n"
        f"Median of {args.repeats} interleaved repeats of {args.steps} asynchronously dispatched steps; "
        "one device; `host pairing` is the host-side pairing alone (noise draw + OT + gather) per batch.\n\n"
        + C.md_table(
            ["batch", "coupling", "ms / step", "vs independent", "host pairing (ms)", "compile (s)"], rows
        )
    )
    crow = [
        [c["batch"]]
        + [f"{c['mean_sq_pair_distance'][k]:.3f}" for k in ("independent", "sinkhorn", "exact", "exact_emd")]
        for c in res["checks"]
    ]
    checks = (
        "## Pairings (sanity check, asserted)\n\n"
        "Mean squared distance of the (data, noise) pairs on one batch. Our exact permutation equals POT's "
        "`ot.emd2` optimum (asserted to 1e-5); torchcfm's sampled pairs (with replacement) reach about it; "
        "Sinkhorn (entropic) lies between exact and independent.\n\n"
        + C.md_table(["batch", "independent", "sinkhorn", "exact permutation (ours)", "ot.emd sampled"], crow)
    )
    srows = [
        [
            r["batch"],
            C.fmt_ms(r["emd"]),
            C.fmt_ms(r["lsa"]),
            "-" if r["csgraph"] is None else C.fmt_ms(r["csgraph"]),
            C.fmt_ratio(r["lsa"] / r["emd"]),
            r["auto"],
        ]
        for r in res["solvers"]
    ]
    solvers = (
        "## Exact solvers alone (host)\n\n"
        f"Median of {args.repeats} solves of one 8-Gaussians batch vs standard normal noise (cost matrix "
        "included); both reach the same optimal cost (asserted). `auto` is what `exact_ot_pairing` uses.\n\n"
        + C.md_table(
            [
                "batch",
                "POT ot.emd (ms)",
                "scipy linear_sum_assignment (ms)",
                "scipy csgraph matching (ms)",
                "scipy / emd",
                "auto",
            ],
            srows,
        )
    )
    bound = (
        "## Lower bound of an overlapped exact-OT step on this host\n\n"
        "max(independent step, host pairing / cores): even with the pairing perfectly spread over every "
        "core and hidden behind the device step, one step cannot be faster than this.\n\n"
        + C.md_table(
            ["batch", "cores", "host pairing (ms)", "bound vs independent"],
            [
                [r["batch"], r["cores"], C.fmt_ms(r["pairing_s"]), C.fmt_ratio(r["bound_ratio"])]
                for r in res["bound"]
            ],
        )
    )
    return [table, bound, checks, solvers]


def lower_bound(res: dict) -> list[dict]:
    """Per batch: the fastest an overlapped exact-OT step can be on this host, from the measured
    numbers. Pairing and the device step share `os.cpu_count()` cores, so at best the pairing of
    one batch costs (host pairing time) / cores of wall time per step, and a step is never faster
    than the I-CFM step: bound = max(independent step, pairing / cores), as a ratio to independent.
    The pairing is the same function in the prefetched and the inline rows, timed alone after each;
    the smaller of the two is used (a larger one only means another job took the cores)."""
    import os

    cores = os.cpu_count() or 1
    out = []
    for b in sorted({r["batch"] for r in res["rows"]}):
        by = {r["coupling"]: r for r in res["rows"] if r["batch"] == b}
        ind = by["independent"]["step_s"]
        pairing = min(by[c]["host_pairing_s"] for c in ("exact_prefetch", "exact_inline"))
        bound = max(ind, pairing / cores)
        out.append({"batch": b, "cores": cores, "pairing_s": pairing, "bound_ratio": bound / ind})
    return out


def parse_args(argv: Sequence[str] | None):
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--solver_batches", default=None, help="comma-separated batch sizes of the solver table")
    known, argv = pre.parse_known_args(argv)
    args = C.base_args(__doc__, argv)
    if args.quick:
        args.batches, args.steps, args.repeats, args.pool = (64,), 3, 3, 4
        args.solver_batches = (32, 128)
    else:
        args.batches, args.steps, args.repeats, args.pool = (512,), 40, 5, 16
        args.solver_batches = (32, 64, 128, 256, 512, 1024)
    if known.solver_batches:
        args.solver_batches = tuple(int(b) for b in known.solver_batches.split(","))
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the Markdown report and write it (+ JSON) to `--out`."""
    return C.run_main(NAME, "Minibatch OT couplings: cost per train step", parse_args, run, report, argv)


if __name__ == "__main__":
    main()
