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
  permutation from POT's `ot.emd`, scipy's assignment as a fallback for degenerate plans), i.e. what
  `training.loop` does for ``ot_exact``. Unlike torchcfm's sampled pairs it is a true coupling.
* ``exact ot.emd (host, torchcfm)``: torchcfm's `OTPlanSampler(method="exact")` transcribed: the
  squared-Euclidean cost matrix, POT's network simplex `ot.emd` (Bonneel et al. 2011), then B pairs
  drawn from the flattened B x B plan with `np.random.choice` (torchcfm's `sample_map`). This is the
  host pattern the exact-OT literature code uses.

How it is timed: a loop of `--steps` train steps, dispatched asynchronously and blocked once at the
end (as the real training loop runs), so the host pairing of batch k+1 can overlap the device's
step k; the median over interleaved repeats, divided by the steps. Data batches are drawn before
timing (the same for every coupling); noise drawn on the host is part of a host coupling's cost.
The host-only pairing time per batch is reported too. On this CPU "device" and "host" share the same
(two) cores, so the overlap an accelerator would give is mostly absent here.

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
COUPLINGS = ("independent", "sinkhorn", "exact_lsa", "exact_emd")
LABELS = {
    "independent": "independent (I-CFM)",
    "sinkhorn": "sinkhorn (in-graph, ott-jax)",
    "exact_lsa": "exact permutation (host, ours: pair_batch_exact_ot)",
    "exact_emd": "exact ot.emd (host, torchcfm pattern)",
}
OBJECTIVE_COUPLING = {
    "independent": "independent",
    "sinkhorn": "ot_sinkhorn",
    "exact_lsa": "ot_exact",
    "exact_emd": "ot_exact",
}


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


def host_batches(pool: np.ndarray, coupling: str, seed: int) -> Callable[[int], dict]:
    """`batch_fn(k) -> dict` of numpy arrays for step k: the data, plus the paired noise for the host
    couplings (computed on each call: it is part of the step's cost)."""
    rng = np.random.default_rng(seed)
    if coupling in ("independent", "sinkhorn"):
        return lambda k: {"x": pool[k % len(pool)]}
    if coupling == "exact_lsa":
        return lambda k: couplings.pair_batch_exact_ot({"x": pool[k % len(pool)]}, rng)

    def emd(k):
        x = pool[k % len(pool)]
        xs, ns = torchcfm_emd_pairs(x, rng.standard_normal(x.shape).astype(x.dtype), rng)
        return {"x": xs, "noise": ns}

    return emd


def check_couplings(x: np.ndarray, seed: int = 0) -> dict:
    """Mean squared pair distance of each coupling on one batch; asserts our exact permutation and ot.emd reach
    the same minimal cost and that OT pairings are shorter than independent ones."""
    import ot

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    indep = float(np.mean(np.sum((x - noise) ** 2, -1)))
    perm = couplings.exact_ot_pairing(x, noise)
    lsa = float(np.mean(np.sum((x - noise[perm]) ** 2, -1)))
    emd2 = float(
        ot.emd2(ot.unif(len(x)), ot.unif(len(x)), ot.dist(x.astype(np.float64), noise.astype(np.float64)))
    )
    np.testing.assert_allclose(
        lsa, emd2, rtol=1e-5, err_msg="exact permutation and ot.emd2 disagree on the OT cost"
    )
    # Not timed: XLA's fast-compile options (same values) save a second of compilation.
    idx = jax.jit(couplings.sinkhorn_pairing, compiler_options=FAST_COMPILE)(
        jax.random.key(seed), jnp.asarray(x), jnp.asarray(noise)
    )
    sink = float(np.mean(np.sum((x - noise[np.asarray(idx)]) ** 2, -1)))
    xs, ns = torchcfm_emd_pairs(x, noise, rng)
    emd_sampled = float(np.mean(np.sum((xs - ns) ** 2, -1)))
    assert lsa < sink < indep, (lsa, sink, indep)
    assert emd_sampled < indep, (emd_sampled, indep)
    return {
        "independent": indep,
        "exact_lsa": lsa,
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
            batch_fn = host_batches(pool, c, seed=batch)
            # A fresh copy per coupling: the step donates (deletes) the state it is given.
            state = jax.device_put(jax.tree.map(np.array, rt.host_state), rt.state_sharding)
            t0 = time.perf_counter()
            compiled = step_fn.lower(state, batch_fn(0)).compile()
            compile_s[c] = time.perf_counter() - t0
            box = {"state": state, "k": 0}

            def loop(rt=rt, batch_fn=batch_fn, box=box, compiled=compiled):
                state, metrics = box["state"], None
                for _ in range(args.steps):
                    state, metrics = compiled(state, batch_fn(box["k"]))
                    box["k"] += 1
                box["state"] = state
                return metrics

            metrics = C.block(loop())  # warm-up; the loss must be finite
            assert np.isfinite(float(metrics["loss"])), (c, batch, metrics)
            loops[c] = loop
            if c.startswith("exact"):
                host_s[c] = statistics.median(
                    C.timed(lambda k=k, fn=batch_fn: fn(k)) for k in range(max(3, args.repeats))
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
    return {"rows": rows, "checks": checks}


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
        + [
            f"{c['mean_sq_pair_distance'][k]:.3f}"
            for k in ("independent", "sinkhorn", "exact_lsa", "exact_emd")
        ]
        for c in res["checks"]
    ]
    checks = (
        "## Pairings (sanity check, asserted)\n\n"
        "Mean squared distance of the (data, noise) pairs on one batch. Our exact permutation equals POT's "
        "`ot.emd2` optimum (asserted to 1e-5); torchcfm's sampled pairs (with replacement) reach about it; "
        "Sinkhorn (entropic) lies between exact and independent.\n\n"
        + C.md_table(["batch", "independent", "sinkhorn", "exact permutation (ours)", "ot.emd sampled"], crow)
    )
    return [table, checks]


def parse_args(argv: Sequence[str] | None):
    args = C.base_args(__doc__, argv)
    if args.quick:
        args.batches, args.steps, args.repeats, args.pool = (64,), 3, 3, 4
    else:
        args.batches, args.steps, args.repeats, args.pool = (256, 1024), 10, 5, 16
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the Markdown report and write it (+ JSON) to `--out`."""
    return C.run_main(NAME, "Minibatch OT couplings: cost per train step", parse_args, run, report, argv)


if __name__ == "__main__":
    main()
