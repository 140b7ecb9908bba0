r"""Sampler loop structure: one jitted `lax.scan` over the grid vs a host loop of jitted steps.

What is compared (same sampler math in all three, so only the loop structure differs):

* **ours**: `Sampler.run` under one `jax.jit`, from the registry (`get_sampler('heun')`,
  `get_sampler('dpmpp_2m')`): the step loop is a `jax.lax.scan` over the time grid, so the program
  holds one copy of the step whatever the number of steps N, and nothing returns to the host
  between steps (DESIGN.md, "Samplers").
* **host loop** (the baseline): the loop structure of k-diffusion's `sample_heun` /
  `sample_dpmpp_2m` and of the diffusers scheduler loop, transcribed to JAX the way older JAX
  research code does it: a Python `for` loop that calls a jitted single step N times. It is a *tuned*
  version of that pattern: the step is the library's own `Sampler.step` (identical arithmetic, and a
  multistep history carried exactly as in the scan), the grid stays on the device and each call only
  passes the step index, so the per-step cost is one dispatch of an already-compiled program and
  nothing else. (score_sde's JAX samplers already use `lax.fori_loop`; the host loop is the pattern
  of the PyTorch codebases and of their direct JAX ports.)
* **unrolled** (a second reference, compile time only): a Python loop *inside* one `jax.jit`, the
  other common JAX pattern. It has no per-step dispatch but traces N copies of the step, so its
  compile time grows with N; it shows what `lax.scan` buys over it.

Measured (float32, exact denoiser of the 8-mode 2-D Gaussian-mixture ring of `diffusion_jax.analytic`
under VP-linear with eps prediction, Karras grid):

1. compile time (trace + lower + XLA compile, after `jax.clear_caches()`) for N = 10, 50, 200;
2. steady-state time of one full sampling call (compiled, median of repeats, blocked), for a small
   batch (where per-step dispatch dominates on CPU) and a large batch (where the denoiser's
   arithmetic dominates and the two should converge).

Before timing, the samples of the three variants are checked to agree (`np.testing.assert_allclose`),
so the comparison is between computations of the same result.

    .venv/bin/python -m benchmarks.sampler_scan            # default, ~1-2 min on 2 shared cores
    .venv/bin/python -m benchmarks.sampler_scan --quick    # tiny sizes, a smoke test (< 20 s)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C
from diffusion_jax import analytic
from diffusion_jax.samplers import seeds
from diffusion_jax.samplers.registry import get_sampler, make_grid
from diffusion_jax.schedules import get_schedule
from diffusion_jax.training.build import FAST_COMPILE

NAME = "sampler_scan"
SAMPLERS = ("heun", "dpmpp_2m")
RTOL = ATOL = 2e-5  # float32: the same ops fused differently may differ in the last bits


def _problem(batch: int, num_steps: int):
    """The denoiser (exact, analytic), initial noise [batch, 2] and grid [num_steps + 1]."""
    schedule = get_schedule("vp_linear")
    den = analytic.gmm_2d_ring(dtype=jnp.float32).denoiser(schedule, "eps")
    grid = make_grid("karras", num_steps, schedule)
    keys = seeds.sample_keys(np.arange(batch), 0)  # the sampling engine's keys and initial state
    z = seeds.initial_state(keys, None, (2,), schedule, float(grid[0]), jnp.float32)
    return den, z, grid


def make_ours(sampler, opts=None):
    """One jit around `Sampler.run`: the steps are a `lax.scan` (library code, unchanged).
    `opts`: XLA compiler options (only --quick passes any, to compile faster)."""
    return jax.jit(lambda den, z, grid: sampler.run(den, z, grid).samples, compiler_options=opts)


class HostLoop:
    """The baseline: a Python loop calling a jitted single step (k-diffusion's loop structure).

    `init`, `step` and `finalize` are the sampler's own, each jitted once; the step takes the grid
    and the step index so that a call costs one dispatch (no per-step host->device copy of t).
    """

    def __init__(self, sampler, opts=None):
        self.sampler = sampler
        self.init = jax.jit(sampler.init, compiler_options=opts)
        self.finalize = jax.jit(sampler.finalize, compiler_options=opts)

        def one_step(den, carry, grid, i, num_steps):
            return sampler.step(den, carry, grid[i], grid[i + 1], i, None, num_steps)

        self.step = jax.jit(one_step, static_argnums=4, compiler_options=opts)

    def __call__(self, den, z, grid):
        n = grid.shape[0] - 1
        self.sampler.validate(den.schedule, n)
        carry = self.init(den, z, grid)
        for i in range(n):
            carry = self.step(den, carry, grid, np.int32(i), n)
        return self.finalize(den, carry)

    def compile(self, den, z, grid):
        """AOT-compile the three programs (what the first call would compile)."""
        n = grid.shape[0] - 1
        carry = jax.eval_shape(self.sampler.init, den, z, grid)
        self.init.lower(den, z, grid).compile()
        self.step.lower(den, carry, grid, np.int32(0), n).compile()
        self.finalize.lower(den, carry).compile()


def make_unrolled(sampler, opts=None):
    """A Python loop inside one jit: N traced copies of the step (compile time grows with N)."""

    def run(den, z, grid):
        n = grid.shape[0] - 1
        carry = sampler.init(den, z, grid)
        for i in range(n):
            carry = sampler.step(den, carry, grid[i], grid[i + 1], jnp.int32(i), None, n)
        return sampler.finalize(den, carry)

    return jax.jit(run, compiler_options=opts)


def compile_seconds(fn, den, z, grid, repeats: int, clear: bool = True) -> float:
    """Median seconds to trace, lower and compile `fn` (a jitted function or a `HostLoop`), with the
    caches cleared before each repeat so nothing is reused. The last compilation stays cached, so the
    first call of `fn` afterwards does not compile again. `clear=False` (--quick only) skips the
    clearing, which also drops every small eager-op program that then compiles again."""
    out = []
    for _ in range(repeats):
        if clear:
            jax.clear_caches()
        t0 = time.perf_counter()
        if isinstance(fn, HostLoop):
            fn.compile(den, z, grid)
        else:
            fn.lower(den, z, grid).compile()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def check_same_samples(name: str, fns: dict, den, z, grid) -> float:
    """Assert every variant in `fns` (incl. 'ours') gives ours' samples; returns the max |difference|."""
    ours = np.asarray(fns["ours"](den, z, grid))
    assert np.all(np.isfinite(ours)), f"{name}: non-finite samples"
    worst = 0.0
    for variant, fn in fns.items():
        x = np.asarray(fn(den, z, grid))
        np.testing.assert_allclose(x, ours, rtol=RTOL, atol=ATOL, err_msg=f"{name}: {variant} != ours")
        worst = max(worst, float(np.max(np.abs(x - ours))))
    return worst


def time_calls(fns: dict, den, z, grid, repeats: int) -> dict[str, float]:
    """Median steady-state seconds per sampling call of ours and the host loop (warmed up first)."""
    for fn in fns.values():
        C.block(fn(den, z, grid))
    return C.median_interleaved({k: (lambda fn=fn: fn(den, z, grid)) for k, fn in fns.items()}, repeats)


def run(args) -> dict:
    rows_compile, rows_run, checks = [], [], []
    # --quick is a smoke test: XLA's fast-compile options (same values, less optimised code) keep it
    # short. A measurement never uses them.
    opts = FAST_COMPILE if args.quick else None
    for name in SAMPLERS:
        sampler = get_sampler(name)
        # Each N is compiled once per variant: the compile timing leaves the program cached, and the
        # equality check and (at N = run_steps) the small-batch timing reuse it. Equality is checked
        # before any run-time measurement, so every timing is of computations known to agree.
        for n in sorted(set(args.compile_steps) | {args.run_steps}):
            den, z, grid = _problem(args.small_batch, n)
            fns = {"ours": make_ours(sampler, opts), "host_loop": HostLoop(sampler, opts)}
            if n <= args.max_unrolled_steps:
                fns["unrolled"] = make_unrolled(sampler, opts)
            rec = {"sampler": name, "num_steps": n, "unrolled": None}
            for variant, fn in fns.items():
                # The unrolled program takes tens of seconds to compile at N = 50 (one repeat; not
                # built beyond args.max_unrolled_steps, where its compile time would dominate the run).
                reps = 1 if variant == "unrolled" else args.compile_repeats
                rec[variant] = compile_seconds(fn, den, z, grid, reps, clear=not args.quick)
            if n in args.compile_steps:
                rows_compile.append(rec)
                print(f"compile {name} N={n}: " + ", ".join(f"{k}={v}" for k, v in rec.items()))
            diff = check_same_samples(name, fns, den, z, grid)
            checks.append({"sampler": name, "num_steps": n, "variants": sorted(fns), "max_abs_diff": diff})
            if n == args.run_steps:
                fns.pop("unrolled", None)
                t = time_calls(fns, den, z, grid, args.repeats)
                rows_run.append({"sampler": name, "batch": args.small_batch, "num_steps": n, **t})

        den, z, grid = _problem(args.large_batch, args.run_steps)
        fns = {"ours": make_ours(sampler, opts), "host_loop": HostLoop(sampler, opts)}
        checks.append(
            {
                "sampler": name,
                "num_steps": args.run_steps,
                "batch": args.large_batch,
                "variants": sorted(fns),
                "max_abs_diff": check_same_samples(name, fns, den, z, grid),
            }
        )
        t = time_calls(fns, den, z, grid, args.repeats)
        rows_run.append({"sampler": name, "batch": args.large_batch, "num_steps": args.run_steps, **t})
        for r in rows_run[-2:]:
            print(f"run {name} B={r['batch']}: ours={r['ours']:.4g}s host_loop={r['host_loop']:.4g}s")
    return {"compile": rows_compile, "run": rows_run, "equality_checks": checks}


def report(res: dict, args) -> list[str]:
    def opt(x):
        return "-" if x is None else C.fmt_ms(x)

    rows = []
    for r in res["compile"]:
        un = r["unrolled"]
        rows.append(
            [
                r["sampler"],
                r["num_steps"],
                C.fmt_ms(r["ours"]),
                C.fmt_ms(r["host_loop"]),
                opt(un),
                C.fmt_ratio(r["host_loop"] / r["ours"]),
                "-" if un is None else C.fmt_ratio(un / r["ours"]),
            ]
        )
    compile_md = (
        "## Compile time vs number of steps\n\n"
        f"Trace + lower + XLA compile, caches cleared, median of {args.compile_repeats}; batch "
        f"{args.small_batch}. The host loop compiles one step whatever N (plus init/finalize); "
        f"`unrolled` is a Python loop inside one jit (one repeat; not built for N > {args.max_unrolled_steps}).\n\n"
        + C.md_table(
            [
                "sampler",
                "N",
                "ours (ms)",
                "host loop (ms)",
                "unrolled (ms)",
                "host loop / ours",
                "unrolled / ours",
            ],
            rows,
        )
    )
    rows = []
    for r in res["run"]:
        nfe = get_sampler(r["sampler"]).nfe(r["num_steps"])
        rows.append(
            [
                r["sampler"],
                r["batch"],
                r["num_steps"],
                nfe,
                C.fmt_ms(r["ours"]),
                C.fmt_ms(r["host_loop"]),
                C.fmt_ratio(r["host_loop"] / r["ours"]),
            ]
        )
    run_md = (
        "## Steady-state time per sampling call\n\n"
        f"Compiled, median of {args.repeats} interleaved repeats, blocked on the samples.\n\n"
        + C.md_table(
            ["sampler", "batch", "steps", "NFE", "ours (ms)", "host loop (ms)", "host loop / ours"], rows
        )
    )
    eq = "; ".join(
        f"{c['sampler']} N={c['num_steps']} B={c.get('batch', args.small_batch)} "
        f"({'+'.join(v for v in c['variants'] if v != 'ours')}): {c['max_abs_diff']:.1e}"
        for c in res["equality_checks"]
    )
    eq_md = (
        "## Same samples\n\n"
        f"`assert_allclose(rtol={RTOL}, atol={ATOL})` of each variant against ours passed before any "
        f"timing; max |difference| to ours: {eq}."
    )
    return [compile_md, run_md, eq_md]


def parse_args(argv: Sequence[str] | None):
    args = C.base_args(__doc__, argv)
    if args.quick:
        args.compile_steps, args.max_unrolled_steps, args.compile_repeats = (4,), 4, 1
        args.run_steps, args.small_batch, args.large_batch, args.repeats = 4, 8, 64, 3
    else:
        args.compile_steps, args.max_unrolled_steps, args.compile_repeats = (10, 50, 200), 50, 3
        args.run_steps, args.small_batch, args.large_batch, args.repeats = 50, 16, 16384, 9
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the Markdown report and write it (+ JSON) to `--out`."""
    return C.run_main(
        NAME,
        "Sampler loop: one jitted lax.scan vs a host loop of jitted steps",
        parse_args,
        run,
        report,
        argv,
    )


if __name__ == "__main__":
    main()
