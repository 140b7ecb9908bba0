"""Peak memory of sampling vs the number of samples: streaming (ours) vs collect-then-write.

Question: does `python -m diffusion_jax.sample` keep its memory bounded as the number of seeds
grows? Ours streams: each chunk is written (on a background thread) as it finishes while the next
chunks compute, so peak RSS should not depend on the number of samples. Baseline: the previous
structure, `seeds.sample` for every seed (all chunks kept, concatenated), then `save_samples` at
the end, which holds several copies of every sample.

Each measurement is a fresh process (peak RSS = `ru_maxrss` of that process): the exact denoiser
of a 784-dimensional standard Gaussian (Fashion-MNIST-sized samples, 3.1 kB each in float32),
Euler on 10 Karras steps, chunks of 16, one device. Reported: peak RSS at N small / large and their
ratio (target: within 10 %), for both structures. Both sides are first checked to write the same
sample for a seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks._common import base_args, fmt_ratio, md_table, run_main

DIM = 784

CHILD = """
import resource, runpy, sys
mode, n, out, dim, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
args = ["--config.denoiser.source=analytic", "--config.denoiser.distribution=standard_gaussian",
        f"--config.denoiser.distribution_kwargs.dim={dim}", f"--config.grid.num_steps={steps}",
        f"--config.seeds=0-{n - 1}", f"--config.output_dir={out}", "--config.progress=false"]
if mode == "ours":
    sys.argv = ["diffusion_jax.sample", *args]
    try:
        runpy.run_module("diffusion_jax.sample", run_name="__main__")
    except SystemExit as e:
        assert not e.code, e.code
else:  # the collect-everything-then-write structure
    from diffusion_jax import sample as cli
    from diffusion_jax.training import overrides
    from diffusion_jax.samplers import seeds as sd
    cfg = overrides.apply_overrides(cli.get_default_config(), [a[9:].split("=", 1) for a in args])
    plan, seeds, out_dir = cli.build_plan(cfg, None)
    x = sd.sample(plan.denoiser, plan.sampler, plan.grid, seeds, plan.shape, chunk_size=plan.chunk_size)
    sd.save_samples(out_dir, seeds, sd.np.asarray(x.samples), meta=plan.meta)
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(mode: str, n: int, out: str, dim: int = DIM, steps: int = 10) -> float:
    """Peak RSS (MB) of a fresh process drawing seeds 0..n-1 (`mode`: 'ours' or 'collect') of the
    `dim`-dimensional Gaussian's exact denoiser with `steps` Euler steps into `out`."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(n), out, str(dim), str(steps)],
        capture_output=True,
        text=True,
        env=env,
    )
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    kb = next(int(ln.split()[1]) for ln in p.stdout.splitlines() if ln.startswith("MAXRSS_KB"))
    return kb / 1024.0


def run(args) -> dict:
    # --quick: a smoke test of the four processes (tiny samples, 2 steps); its RSS means nothing.
    sizes, dim, steps = ((16, 64), 16, 2) if args.quick else ((200, 20_000), DIM, 10)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for n in sizes:
                rows[(mode, n)] = peak_rss_mb(mode, n, os.path.join(tmp, f"{mode}_{n}"), dim, steps)
        if len(args.modes) == 2:
            a = np.load(os.path.join(tmp, f"ours_{sizes[0]}", "000007.npz"))["sample"]
            b = np.load(os.path.join(tmp, f"collect_{sizes[0]}", "000007.npz"))["sample"]
            np.testing.assert_array_equal(a, b)  # both structures write the same sample for a seed
    return {
        "sizes": list(sizes),
        "dim": dim,
        "peak_rss_mb": {f"{m}_{n}": v for (m, n), v in rows.items()},
        **{f"ratio_{m}": rows[(m, sizes[1])] / rows[(m, sizes[0])] for m in args.modes},
    }


def report(res, args) -> list[str]:
    lo, hi = res["sizes"]
    r = res["peak_rss_mb"]
    label = {"ours": "streaming (ours)", "collect": "collect, then write"}
    rows = [
        [label[m], f"{r[f'{m}_{lo}']:.0f}", f"{r[f'{m}_{hi}']:.0f}", fmt_ratio(res[f"ratio_{m}"])]
        for m in ("ours", "collect")
        if f"ratio_{m}" in res
    ]
    return [md_table(["structure", f"peak RSS MB, N={lo}", f"N={hi}", f"N={hi} / N={lo}"], rows)]


def parse_args(argv):
    """--quick / --out, plus --modes (default both structures; `--modes ours` measures ours alone)."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--modes", nargs="+", choices=("ours", "collect"), default=["ours", "collect"])
    known, rest = pre.parse_known_args(argv)
    args = base_args(__doc__, rest)
    args.modes = tuple(dict.fromkeys(known.modes))
    return args


def main(argv=None) -> dict:
    return run_main(
        "sampling_memory",
        "Sampling: peak RSS vs number of samples (streamed writes vs collect-then-write)",
        parse_args,
        run,
        report,
        argv,
    )


if __name__ == "__main__":
    main()
