r"""Training throughput and model FLOP utilisation (MFU) of the library's train step, ready for pods.

For each model: the full train step (`training.step`: loss, backward, Adam, EMA, non-finite guard)
of the library, data parallel over all devices, is compiled for its paper resolution; its FLOPs per
step come from XLA's `compiled.cost_analysis()` (per device), its time from interleaved timed steps
(median). MFU = FLOPs per step / step time / peak FLOP/s of one device (Chowdhery et al. 2022,
"PaLM", App. B, counts model FLOPs the same way, without rematerialisation).

Peak: on CPU measured in the same run (a [2048, 2048] float32 matmul, 2 n^3 FLOPs, timed interleaved
with the train steps, median, so both see the same load); on accelerators the vendor's dense bf16 peak per chip (`PEAKS`). The CPU run trains in
float32; on accelerators pass `--compute_dtype bfloat16`.

Models: DiT-S/2, B/2, L/2, XL/2 on 32x32x4 latents (ImageNet-256 through the SD VAE; Peebles & Xie
2023; 4 output channels, the paper's learned-sigma head has 8) and the ADM U-Net on ImageNet-64 (Dhariwal & Nichol 2021, as retrained by EDM). Models that do
not fit a CPU run can be given to `--flops_only` (compiled from abstract shapes, nothing allocated).

    .venv/bin/python -m benchmarks.throughput
    .venv/bin/python -m benchmarks.throughput --quick
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C

NAME = "throughput"
MODELS = ("DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2", "ADM-64")
QUICK_MODELS = ("DiT-tiny/2", "ADM-tiny")
# Dense bf16 peak FLOP/s per chip (vendor datasheets: Google Cloud TPU system architecture pages;
# NVIDIA H100 / H200 SXM datasheets, without sparsity).
PEAKS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "H100": 989e12,
    "H200": 989e12,
}


def model_config(name: str):
    """(full experiment config, per-sample data shape) for a model name of MODELS / QUICK_MODELS."""
    from configs import base
    from configs.models import adm_imagenet64, dit, unet_small
    from diffusion_jax import objectives

    cfg = base.get_config()
    if name.startswith("DiT-"):
        size = name[4:].split("/")[0]
        cfg.model = dit.get_config(f"{size}/2")
        cfg.model.learn_sigma = False  # the eps loss trains 4 output channels (the paper's 8: +sigma)
        cfg.objective = objectives.objective_preset("vp_eps")
    elif name == "ADM-64":
        cfg.model = adm_imagenet64.get_config()
        cfg.objective = objectives.objective_preset("edm")
    elif name == "ADM-tiny":
        cfg.model = unet_small.get_config("tiny_adm")
        cfg.model.context_dim = 0
        cfg.objective = objectives.objective_preset("edm")
    else:
        raise ValueError(f"throughput: model {name!r} unknown; valid: {MODELS + QUICK_MODELS}")
    m = cfg.model
    cfg.training.grad_clip = 0.0
    return cfg, (int(m.image_size), int(m.image_size), int(m.in_channels))


def vendor_peak(device_kind: str) -> float | None:
    """Dense bf16 peak of an accelerator from PEAKS by its `device_kind`, or None if unknown."""
    for k, v in sorted(PEAKS.items(), key=lambda kv: -len(kv[0])):
        if k.lower() in device_kind.lower():
            return v
    return None


def build_step(name: str, per_device_batch: int, compute_dtype: str, compiler_options=None):
    """(config, jitted step, abstract state, abstract batch, global batch, mesh, rules) for a model,
    data parallel over all devices. Nothing is allocated except the network's small fixed buffers."""
    from diffusion_jax.models.functional import abstract_split, host_random_like, make_net_fn
    from diffusion_jax.training import build, sharding
    from diffusion_jax.training.state import make_optimizer
    from diffusion_jax.training.step import jit_train_step, make_train_step, with_compute_dtype

    cfg, shape = model_config(name)
    cfg.training.compute_dtype = compute_dtype
    mesh = sharding.make_mesh((jax.device_count(),))
    rules = sharding.make_rules(mesh, "dp")
    graphdef, _, arest = abstract_split(cfg.model)
    net_fn = with_compute_dtype(make_net_fn(graphdef, host_random_like(arest, seed=1)), compute_dtype)
    loss_fn, _ = build.build_loss(cfg, net_fn)
    step = make_train_step(loss_fn, make_optimizer(cfg.training), cfg.training)
    abstract = build.abstract_train_state(cfg, mesh, rules)
    batch_sh = sharding.batch_sharding(mesh, rules, 1)
    fn = jit_train_step(step, mesh, jax.tree.map(lambda x: x.sharding, abstract), batch_sh, compiler_options)
    b = per_device_batch * jax.device_count()
    batch = {
        "x": jax.ShapeDtypeStruct((b, *shape), jnp.float32, sharding=sharding.batch_sharding(mesh, rules, 4)),
        "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sh),
    }
    return cfg, fn, abstract, batch, b, mesh, rules


def concrete(cfg, abstract, batch, mesh, rules, seed: int = 0):
    """A real state (host-random parameters, `build.build_state`) and batch for the timed runs."""
    from diffusion_jax.models.functional import host_random_like
    from diffusion_jax.training import build

    params = jax.device_put(
        host_random_like(abstract.params, seed=seed), jax.tree.map(lambda x: x.sharding, abstract.params)
    )
    state, _ = build.build_state(cfg, params, mesh=mesh, rules=rules)
    rng = np.random.default_rng(seed)
    x = jax.device_put(rng.standard_normal(batch["x"].shape).astype(np.float32), batch["x"].sharding)
    label = jax.device_put(
        rng.integers(0, 1000, batch["label"].shape).astype(np.int32), batch["label"].sharding
    )
    return state, {"x": x, "label": label}


def run(args) -> dict:
    dev = jax.devices()[0]
    kind = dev.device_kind
    on_cpu = dev.platform == "cpu"
    peak = vendor_peak(kind)
    from diffusion_jax.training.build import FAST_COMPILE

    rows, loops = [], {}
    # FLOPs-only models first (their programs are dropped before any state is allocated), compiled
    # without XLA optimisation (same dot / convolution FLOPs, a fraction of the compile time and memory).
    for name in args.flops_only + args.models:
        opts = FAST_COMPILE if name in args.flops_only or args.fast_compile else None
        cfg, fn, abstract, batch, b, mesh, rules = build_step(name, args.batch, args.compute_dtype, opts)
        t0 = time.perf_counter()
        compiled = fn.lower(abstract, batch).compile()
        compile_s = time.perf_counter() - t0
        flops = float(compiled.cost_analysis()["flops"])
        n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params)))
        row = dict(model=name, params=n_params, global_batch=b, flops_per_step=flops, compile_s=compile_s)
        if name in args.models:
            state, data = concrete(cfg, abstract, batch, mesh, rules)
            box = {"state": compiled(state, data)[0]}  # warm-up step

            def loop(box=box, compiled=compiled, data=data):
                box["state"], metrics = compiled(box["state"], data)
                return metrics

            loops[name] = loop
        rows.append(row)
    if on_cpu:  # the peak is timed interleaved with the steps, so both see the same load
        n = args.matmul_n
        a = jnp.ones((n, n), jnp.float32)
        mm = jax.jit(lambda a, b: a @ b)
        C.block(mm(a, a))
        loops["_matmul"] = lambda: mm(a, a)
    times = C.median_interleaved(loops, args.repeats) if loops else {}
    if on_cpu:
        peak = 2.0 * args.matmul_n**3 / times.pop("_matmul")
    for row in rows:
        if row["model"] in times:
            s = times[row["model"]]
            row.update(step_s=s, images_per_s=row["global_batch"] / s)
            row["mfu"] = row["flops_per_step"] / s / peak if peak else None
    return {
        "device_kind": kind,
        "peak_flops": peak,
        "peak_source": "measured matmul" if on_cpu else "vendor",
        "compute_dtype": args.compute_dtype,
        "fast_compile": bool(args.fast_compile),
        "rows": rows,
    }


def report(res, args) -> list[str]:
    peak = res["peak_flops"]
    rows = []
    for r in res["rows"]:
        measured = "step_s" in r
        rows.append(
            [
                r["model"],
                f"{r['params'] / 1e6:.1f}M",
                r["global_batch"],
                f"{r['flops_per_step'] / r['global_batch'] / 1e9:.3g}",
                C.fmt_ms(r["step_s"]) if measured else "-",
                f"{r['images_per_s']:.2f}" if measured else "-",
                f"{100 * r['mfu']:.1f} %" if measured and r["mfu"] is not None else "-",
            ]
        )
    table = C.md_table(
        ["model", "params", "global batch", "train GFLOPs / image", "step ms", "images/s", "MFU"], rows
    )
    p = f"{peak / 1e9:.1f} GFLOP/s ({res['peak_source']}, {res['device_kind']})" if peak else "unknown"
    return [
        f"Full train step ({res['compute_dtype']}{', unoptimised XLA' if res['fast_compile'] else ''}), data parallel over {jax.device_count()} device(s); FLOPs from "
        f"XLA's cost analysis; peak {p}; medians of {args.repeats} interleaved steps.",
        table,
    ]


def parse_args(argv):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny DiT and ADM, batch 2: a smoke test")
    p.add_argument("--out", default=C.RESULTS_DIR)
    p.add_argument(
        "--models",
        nargs="*",
        default=None,
        help=f"timed models (default on CPU: DiT-S/2; else {MODELS})",
    )
    p.add_argument("--flops_only", nargs="*", default=None, help="models compiled for FLOPs only")
    p.add_argument(
        "--batch", type=int, default=None, help="per-device batch (default 8 on CPU, 32 otherwise)"
    )
    p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul_n", type=int, default=2048)
    p.add_argument(
        "--fast_compile",
        action="store_true",
        help="compile the timed steps without XLA optimisation (--quick: a smoke test, not a measurement)",
    )
    args = p.parse_args(argv)
    on_cpu = jax.devices()[0].platform == "cpu"
    if args.quick:  # unoptimised XLA: an optimised 8-device compile of the two steps peaked at ~7.6 GB RSS
        args.models, args.flops_only, args.batch, args.repeats, args.matmul_n = (
            list(QUICK_MODELS),
            [],
            2,
            2,
            512,
        )
        args.fast_compile = True
    if args.models is None:
        args.models = ["DiT-S/2"] if on_cpu else list(MODELS)
    if args.flops_only is None:
        args.flops_only = [m for m in MODELS if m not in args.models] if on_cpu else []
    if args.batch is None:
        args.batch = 4 if on_cpu else 32
    bad = [m for m in args.models + args.flops_only if m not in MODELS + QUICK_MODELS]
    if bad:
        p.error(f"models {bad} unknown; valid: {list(MODELS + QUICK_MODELS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    return C.run_main(NAME, "Training throughput and MFU", parse_args, run, report, argv)


if __name__ == "__main__":
    main()
