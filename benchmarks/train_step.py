r"""Data-parallel train step: 8 simulated CPU devices vs 1, same global batch, same result.

The library trains data parallel with `jax.make_mesh` + `NamedSharding` under one `jax.jit` (no
`pmap`; DESIGN.md, "Training"): the global batch is split over the mesh's data axis, parameters and
optimizer state are replicated, and XLA inserts the gradient all-reduce. On a TPU slice that is a
speedup; on this CPU the 8 "devices" of `--xla_force_host_platform_device_count=8` are threads
sharing the same 2 cores, so there is no extra compute to gain and **this benchmark measures the
overhead of the sharded program** (partitioned computation, all-reduce, per-device dispatch), i.e. the
price a CPU test run pays for exercising the same code path as a pod. A ratio near 1 is the good
outcome here; a ratio below 1 would only mean one device under-used the two cores.

Both runs use the library's own step (`training.loop.build_runtime` on the toy2d rectified-flow
config; network: torchcfm's 3 x 64 MLP, or the 4 x 256 'wide' MLP), start from the same state and see
the same batches; the parameters after the timed warm-up steps are asserted equal (to float32
reduction-order tolerance), so both compute the same training run.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python -m benchmarks.train_step
    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python -m benchmarks.train_step --quick
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

# The device count is fixed when the backend starts: ask for 8 CPU devices before jax is imported
# (a no-op when XLA_FLAGS is already set, e.g. by the tests' conftest or the command line).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common as C  # noqa: E402

NAME = "train_step"
DATASET = "8gaussians"
DEVICE_COUNTS = (1, 8)
RTOL, ATOL = 1e-4, 1e-6  # float32; the 8-device gradient is summed in a different order


def make_config(model: str, batch: int, fast_compile: bool):
    """toy2d rectified flow with the chosen MLP ('cfm' 3 x 64 or 'wide' 4 x 256) and global batch."""
    from configs.models import mlp
    from configs.toy2d import common

    cfg = common.make("rf_uniform", DATASET)
    cfg.model = mlp.get_config(model)
    cfg.data.batch_size = batch
    cfg.training.fast_compile = fast_compile
    return cfg


def run(args) -> dict:
    from diffusion_jax.data.toy2d import sample_toy
    from diffusion_jax.training.build import FAST_COMPILE
    from diffusion_jax.training.loop import build_runtime

    if jax.device_count() < max(DEVICE_COUNTS):
        raise RuntimeError(
            f"needs {max(DEVICE_COUNTS)} devices, found {jax.device_count()}: run with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 (set before jax starts)"
        )
    rows = []
    for model in args.models:
        for batch in args.batches:
            draw = jax.jit(lambda k, b=batch: sample_toy(DATASET, k, b), compiler_options=FAST_COMPILE)
            pool = [{"x": np.asarray(draw(jax.random.key(i)))} for i in range(args.pool)]
            loops, params, compile_s = {}, {}, {}
            for n in DEVICE_COUNTS:
                rt = build_runtime(make_config(model, batch, args.quick), devices=jax.devices()[:n])
                state = jax.device_put(rt.host_state, rt.state_sharding)
                t0 = time.perf_counter()
                compiled = rt.step_fn.lower(state, pool[0]).compile()
                compile_s[n] = time.perf_counter() - t0
                for k in range(args.check_steps):  # warm-up, and the run compared across device counts
                    state, _ = compiled(state, pool[k % len(pool)])
                params[n] = jax.tree.map(np.asarray, state.params)
                box = {"state": state}

                def loop(compiled=compiled, box=box):
                    state, metrics = box["state"], None
                    for k in range(args.steps):
                        state, metrics = compiled(state, pool[k % len(pool)])
                    box["state"] = state
                    return metrics

                loops[n] = loop
            leaves1, leaves8 = jax.tree.leaves(params[1]), jax.tree.leaves(params[8])
            for a, b in zip(leaves1, leaves8, strict=True):
                np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg="8-device params != 1-device")
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves1, leaves8, strict=True))
            t = C.median_interleaved(loops, args.repeats)
            rec = {
                "model": model,
                "batch": batch,
                "step_s_1": t[1] / args.steps,
                "step_s_8": t[8] / args.steps,
                "ratio_8_over_1": t[8] / t[1],
                "compile_s_1": compile_s[1],
                "compile_s_8": compile_s[8],
                "max_abs_param_diff": diff,
            }
            rows.append(rec)
            print(
                f"{model} B={batch}: 1 dev {1e3 * rec['step_s_1']:.3g} ms, 8 dev {1e3 * rec['step_s_8']:.3g} ms"
            )
    return {"rows": rows}


def report(res: dict, args) -> list[str]:
    rows = [
        [
            r["model"],
            r["batch"],
            C.fmt_ms(r["step_s_1"]),
            C.fmt_ms(r["step_s_8"]),
            C.fmt_ratio(r["ratio_8_over_1"]),
            f"{r['compile_s_1']:.1f} / {r['compile_s_8']:.1f}",
            f"{r['max_abs_param_diff']:.1e}",
        ]
        for r in res["rows"]
    ]
    return [
        "## Time per train step, 8 simulated devices vs 1\n\n"
        f"Median of {args.repeats} interleaved repeats of {args.steps} asynchronously dispatched steps; "
        "same global batch; the 8 devices share the machine's cores (overhead, not speedup). "
        f"`param diff`: max |difference| of the parameters after {args.check_steps} identical steps "
        f"(asserted within rtol={RTOL}, atol={ATOL}).\n\n"
        + C.md_table(
            [
                "MLP",
                "global batch",
                "1 device (ms)",
                "8 devices (ms)",
                "8 / 1",
                "compile 1 / 8 (s)",
                "param diff",
            ],
            rows,
        )
    ]


def parse_args(argv: Sequence[str] | None):
    args = C.base_args(__doc__, argv)
    if args.quick:
        args.models, args.batches, args.steps, args.repeats, args.pool, args.check_steps = (
            ("cfm",),
            (64,),
            3,
            3,
            2,
            2,
        )
    else:
        args.models, args.batches, args.steps, args.repeats = ("cfm", "wide"), (256, 4096), 10, 5
        args.pool, args.check_steps = 8, 3
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the Markdown report and write it (+ JSON) to `--out`."""
    return C.run_main(
        NAME, "Data-parallel train step: 8 simulated devices vs 1", parse_args, run, report, argv
    )


if __name__ == "__main__":
    main()
