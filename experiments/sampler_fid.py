r"""FID against NFE of a pretrained model, for a sampler x grid x NFE table (issue 14).

`python -m experiments.benchmark_samplers --config=configs/pretrained/<model>.py:<variant> ...` runs
this (the same script's other configs run the 2-D error-vs-reference benchmark). For converted
published weights (`configs/pretrained/*`), every selected sampler runs on every selected grid at each
target NFE (the largest step count whose NFE, by the sampler's own accounting, fits; grids end with a
final step to t = 0). Seeds 0..num_samples-1 are drawn through the one sampling engine
(`convert.pretrained.make_plan`: seed s is the sample `diffusion_jax.sample` writes for it) and latent
models are decoded through their VAE. FID (Heusel et al. 2017) compares InceptionV3 pool3 features of
the 8-bit quantised images (`metrics.inception.feature_fn`) with reference statistics (an .npz with
mu / sigma, default the config's `eval.reference_stats`, e.g. ADM's ImageNet reference batches).

Multi-host: process p draws its own contiguous block of chunks (`samplers.seeds.chunk_block`), and
the feature moments are reduced across devices and processes by `metrics.features.feature_statistics`
(nothing is gathered). Resumable at two levels: seeds are cut into segments of `--segment`; each
segment's moments (count, mean, scatter) go to `<out>/parts/<row>/seg*.npz` as it finishes, and each
finished row to `<out>/results.jsonl`. A re-run with the same settings skips finished rows and
segments (process 0 decides and broadcasts, so hosts need not share a file system for reading).
`--digests` writes each process's per-seed sha256 of the (latent) samples to
`<out>/digests/<row>.p<process>.json`, to check that samples do not depend on the host layout (a
resumed row adds the seeds it draws to the file an earlier run wrote).

`--quick` (tests, smoke runs): random Inception weights unless `--inception` is given; without
`--reference` the reference is the statistics of the config's own sampler and grid on seeds 10**6..
(a self-consistency FID, not comparable to published numbers); and a `tiny` config whose files are
missing gets random tiny models of ours written to `<out>/quick_models/`. `--features=pixels` replaces
Inception by 8x8-pooled pixels (tests).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REFERENCE_SEED = 10**6
FEATURES = ("inception", "pixels")


def pixel_features(images: jax.Array) -> jax.Array:
    """A cheap stand-in for Inception features (tests): images [B, H, W, C] in [-1, 1], rounded to 8
    bits and scaled to [0, 1] as for Inception, average-pooled to at most 8 x 8 -> [B, <= 64 C]."""
    from diffusion_jax.metrics.features import uint8_images

    x = uint8_images(images)
    b, h, w, c = x.shape
    f = max(h // 8, 1)
    x = x[:, : h // f * f, : w // f * f].reshape(b, h // f, f, w // f, f, c)
    return x.mean((2, 4)).reshape(b, -1)


def steps_for_nfe(sampler, schedule, grid: str, target: int) -> int:
    """The largest step count whose sampled grid (`grid`, final step to t = 0) costs <= target NFE by
    the sampler's own accounting, as the engine's plan counts it."""
    from diffusion_jax.samplers import registry

    best = None
    for n in range(1, target + 1):
        try:
            g = registry.make_grid(grid, n, schedule, final_zero=True)
            sampler.validate(schedule, len(g) - 1)
        except ValueError:
            continue
        if sampler.nfe(len(g) - 1, True) > target:
            break
        best = n
    if best is None:
        raise ValueError(f"{sampler.name} on grid {grid!r}: no step count costs <= {target} NFE")
    return best


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmark_samplers --config=configs/pretrained/..."
    )
    p.add_argument("--samplers", default="ddim,dpmpp_2m")
    p.add_argument("--grids", default="leading")
    p.add_argument("--nfe", default="10,20,50")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--segment", type=int, default=1000, help="seeds per resumable segment")
    p.add_argument("--inception", default="", help="converted FID Inception weights (.npz)")
    p.add_argument("--reference", default="", help="reference statistics .npz (mu, sigma)")
    p.add_argument("--out", required=True)
    p.add_argument("--features", default="inception", choices=FEATURES)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--digests", action="store_true", help="write per-seed sample sha256 per process")
    p.add_argument("--coordinator_address", default="")
    p.add_argument("--num_processes", type=int, default=0)
    p.add_argument("--process_id", type=int, default=-1)
    p.add_argument("--num_cpu_devices", type=int, default=0)
    p.add_argument("--cpu_collectives", default="")
    a = p.parse_args(argv)
    for name in ("num_samples", "segment"):
        if getattr(a, name) < 1:
            p.error(f"--{name}={getattr(a, name)} must be >= 1")
    return a


def _csv(s: str) -> list[str]:
    return [x for x in (v.strip() for v in s.split(",")) if x]


# -------------------------------------------------------------------------------------------------
# Multi-host helpers: process 0 decides, everyone follows (exact for float64 via a uint32 view)
# -------------------------------------------------------------------------------------------------


def from_process0(x: np.ndarray) -> np.ndarray:
    """Process 0's value of `x` on every process (same shape / dtype everywhere; bitwise)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    x = np.ascontiguousarray(x)
    raw = x.view(np.uint32) if x.dtype.itemsize % 4 == 0 else x.astype(np.int32)
    out = np.asarray(multihost_utils.broadcast_one_to_all(raw))
    return out.view(x.dtype) if x.dtype.itemsize % 4 == 0 else out.astype(x.dtype)


def _write_atomic(path: str, write) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------------
# Moments of one row: segments of seeds, each sampled, decoded and featurised over all hosts
# -------------------------------------------------------------------------------------------------


def image_shape(plan) -> tuple[int, ...]:
    """Per-sample image shape after `plan.decode` (the latent shape for pixel models)."""
    if plan.decode is None:
        return tuple(plan.shape)
    spec = jax.ShapeDtypeStruct((1, *plan.shape), jnp.dtype(plan.dtype))
    return tuple(jax.eval_shape(plan.decode, spec).shape[1:])


def _batches(plan, seeds: list[int], shape, digests: dict | None):
    """(seed indices [b], images [b, *shape] in [-1, 1]) of this process's chunks of `seeds`, then
    empty batches up to the largest block, so every process yields as many (`feature_statistics`)."""
    pi, pc = jax.process_index(), jax.process_count()
    per = math.ceil(math.ceil(len(seeds) / plan.chunk_size) / pc)
    done = 0
    for c in plan.stream(seeds, devices=jax.local_devices(), process_index=pi, process_count=pc):
        if digests is not None:
            for s, x in zip(c.seeds, c.samples, strict=True):
                digests[str(s)] = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
        x = plan.decode(c.samples) if plan.decode is not None else c.samples
        done += 1
        yield np.asarray(c.seeds, np.int64), np.asarray(x, np.float32)
    for _ in range(per - done):
        yield np.zeros(0, np.int64), np.zeros((0, *shape), np.float32)


def _segment(plan, seeds, featurize, shape, digests) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean [d], scatter [d, d]) of the features of `seeds`, reduced over all hosts."""
    from diffusion_jax.metrics import features

    r = features.feature_statistics(
        featurize, _batches(plan, seeds, shape, digests), batch_size=plan.chunk_size
    )
    scatter = r.sigma * (r.count - 1) if r.count > 1 else np.zeros_like(r.sigma)
    return r.count, np.asarray(r.mu, np.float64), np.asarray(scatter, np.float64)


def row_moments(plan, seeds: list[int], featurize, part_dir: str, segment: int, digests=None):
    """A `fid.MomentAccumulator` over `seeds`, segment by segment; finished segments (files in
    part_dir, seen by process 0) are loaded instead of sampled."""
    from diffusion_jax.metrics import fid

    shape = image_shape(plan)
    d = int(jax.eval_shape(featurize, jax.ShapeDtypeStruct((1, *shape), jnp.float32)).shape[-1])
    acc = fid.MomentAccumulator()
    os.makedirs(part_dir, exist_ok=True)
    for k in range(math.ceil(len(seeds) / segment)):
        path = os.path.join(part_dir, f"seg{k:05d}_{segment}.npz")
        have = from_process0(np.asarray([os.path.isfile(path)], np.int32))[0]
        if have:
            n, mu, sc = np.zeros(1, np.float64), np.zeros(d), np.zeros((d, d))
            if jax.process_index() == 0:
                with np.load(path) as f:
                    n, mu, sc = np.asarray([f["n"]], np.float64), f["mean"], f["scatter"]
            n, mu, sc = (from_process0(np.asarray(v, np.float64)) for v in (n, mu, sc))
            acc.add_moments(float(n[0]), mu, sc)
            continue
        n, mu, sc = _segment(plan, seeds[k * segment : (k + 1) * segment], featurize, shape, digests)
        if jax.process_index() == 0:
            _write_atomic(path, lambda p: np.savez(open(p, "wb"), n=n, mean=mu, scatter=sc))  # noqa: SIM115
        acc.add_moments(n, mu, sc)
    return acc


# -------------------------------------------------------------------------------------------------
# The table
# -------------------------------------------------------------------------------------------------


def variant(cfg, sampler: str, grid: str, steps: int):
    """`cfg` with another sampler (default kwargs) and grid (`steps` steps, final step to t = 0)."""
    c = copy.deepcopy(cfg)
    c.sampler.name, c.sampler.kwargs = sampler, {}
    c.grid.name, c.grid.num_steps, c.grid.kwargs = grid, steps, {"final_zero": True}
    return c


def _settings_id(plan, a, inception_id: str) -> str:
    """What a segment's moments depend on besides sampler / grid / steps: weights, sampling settings,
    features (a 10-hex-digit hash, part of every file name)."""
    m = plan.meta
    keys = ("weights", "guidance_scale", "base_seed", "chunk_size", "dtype", "source", "sampler_kwargs")
    s = {k: m.get(k) for k in keys}
    s.update(features=a.features, inception=inception_id, labels=str(plan.condition_of(0)))
    return hashlib.sha256(json.dumps(s, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _featurizer(a):
    """(feature function [B, H, W, C] in [-1, 1] -> [B, d], an id of its weights)."""
    from flax import nnx

    from diffusion_jax.metrics import inception, inception_weights

    if a.features == "pixels":
        return pixel_features, "pixels"
    if a.inception:
        gs = inception_weights.load_inception(a.inception)
        return inception.feature_fn(*gs), inception_weights.sha256_of(a.inception)[:12]
    return inception.feature_fn(*nnx.split(inception.create(0, abstract=False))), "random0"  # --quick


def _load_done(path: str) -> dict:
    done = {}
    if jax.process_index() == 0 and os.path.isfile(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                done[(r["row"], r["num_samples"], r["reference"])] = r
    return done


def _reference(cfg, pre, a, featurize, inc_id):
    """(mu, sigma) of the reference: the --reference file, or (--quick) the config's own sampler on
    seeds REFERENCE_SEED.. (cached in parts/ like any row)."""
    from diffusion_jax.convert import pretrained
    from diffusion_jax.metrics import fid

    if a.reference:
        return fid.load_statistics(a.reference), os.path.abspath(a.reference)
    plan = pretrained.make_plan(variant(cfg, cfg.sampler.name, cfg.grid.name, cfg.grid.num_steps), pre)
    rid = f"reference-{_settings_id(plan, a, inc_id)}"
    seeds = list(range(REFERENCE_SEED, REFERENCE_SEED + a.num_samples))
    acc = row_moments(plan, seeds, featurize, os.path.join(a.out, "parts", rid), a.segment)
    return acc.statistics(), f"self:{rid}:{a.num_samples}"


def _check_inputs(cfg, a):
    """Every name and file checked before anything is compiled or written (ValueError /
    FileNotFoundError naming the field)."""
    from diffusion_jax.convert import pretrained
    from diffusion_jax.metrics import image_eval
    from diffusion_jax.samplers import registry

    for s in _csv(a.samplers):
        registry.get_sampler(s)
    for g in _csv(a.grids):
        if g not in registry.list_grids():
            raise ValueError(f"--grids: unknown grid {g!r}; valid grids: {sorted(registry.list_grids())}")
    for v in _csv(a.nfe):
        if not v.isdigit() or int(v) < 1:
            raise ValueError(f"--nfe={a.nfe!r}: each entry must be an integer >= 1")
    if a.features == "inception" and not a.quick:  # the files `evaluate` uses for this config (eval.*)
        a.inception = a.inception or cfg.eval.get("inception_weights", "")
        a.reference = a.reference or cfg.eval.get("reference_stats", "")
        image_eval.require_file("inception_weights", a.inception)
    if a.reference or not a.quick:
        image_eval.require_file("reference_stats", a.reference)
    if a.quick and str(cfg.pretrained.denoiser.published).startswith("(random weights"):
        quick_models(cfg, os.path.join(a.out, "quick_models"))
    pretrained.check_files(cfg.pretrained)


def run(cfg, a) -> list[dict]:
    """All rows of the table (module doc); finished ones are read back from results.jsonl."""
    from diffusion_jax.convert import pretrained
    from diffusion_jax.metrics import fid
    from diffusion_jax.samplers import registry

    _check_inputs(cfg, a)
    pre = pretrained.load_pretrained(cfg, dtype=jnp.dtype(cfg.dtype))  # loaded once for every row
    schedule = pre.denoiser.schedule
    featurize, inc_id = _featurizer(a)
    os.makedirs(a.out, exist_ok=True)
    (mu_r, sig_r), ref_id = _reference(cfg, pre, a, featurize, inc_id)
    path = os.path.join(a.out, "results.jsonl")
    done, rows = _load_done(path), []
    for s in _csv(a.samplers):
        smp = registry.get_sampler(s)
        for g in _csv(a.grids):
            for target in (int(x) for x in _csv(a.nfe)):
                steps = steps_for_nfe(smp, schedule, g, target)
                plan = pretrained.make_plan(variant(cfg, s, g, steps), pre)
                rid = f"{s}-{g}-{steps}steps-{_settings_id(plan, a, inc_id)}"
                key = (rid, a.num_samples, ref_id)
                prev = done.get(key)
                have, value = from_process0(np.asarray([prev is not None, prev["fid"] if prev else 0.0]))
                if have:  # finished in an earlier run (process 0's results.jsonl)
                    rows.append(prev or _row(rid, s, g, target, steps, plan, a, ref_id, value, 0.0))
                    continue
                t0 = time.perf_counter()
                dig = {} if a.digests else None
                acc = row_moments(plan, list(range(a.num_samples)), featurize,
                                  os.path.join(a.out, "parts", rid), a.segment, dig)  # fmt: skip
                value = fid.frechet_distance(*acc.statistics(), mu_r, sig_r)
                row = _row(rid, s, g, target, steps, plan, a, ref_id, value, time.perf_counter() - t0)
                rows.append(row)
                _write_row(a.out, path, row, rid, dig)
    if jax.process_index() == 0:
        _write_markdown(a.out, pre, rows, a.num_samples)
    return rows


def _row(rid, s, g, target, steps, plan, a, ref_id, value, seconds) -> dict:
    return dict(row=rid, sampler=s, grid=g, nfe_target=target, steps=steps, nfe=plan.meta["nfe"],
                num_samples=a.num_samples, reference=ref_id, features=a.features, fid=float(value),
                weights=plan.meta["weights"], processes=jax.process_count(), seconds=round(seconds, 2))  # fmt: skip


def _write_row(out, path, row, rid, digests) -> None:
    if digests is not None:
        os.makedirs(os.path.join(out, "digests"), exist_ok=True)
        dpath = os.path.join(out, "digests", f"{rid}.p{jax.process_index()}.json")
        if os.path.isfile(dpath):
            # A resumed row samples only its missing segments: keep the seeds an earlier run of the
            # same row (same id, same samples) recorded, so the file covers every seed drawn here.
            with open(dpath) as f:
                digests = {**json.load(f), **digests}
        _write_atomic(dpath, lambda p: json.dump(digests, open(p, "w"), sort_keys=True))  # noqa: SIM115
    if jax.process_index() == 0:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _write_markdown(out, pre, rows, n) -> None:
    lines = ["| sampler | grid | NFE | steps | FID |", "|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['grid']} | {r['nfe']} | {r['steps']} | {r['fid']:.3f} |" for r in rows]
    head = f"FID of the pretrained model ({pre.sha256['denoiser'][:12]}, {n} samples per row)\n\n"
    _write_atomic(
        os.path.join(out, "results.md"), lambda p: open(p, "w").write(head + "\n".join(lines) + "\n")
    )  # noqa: SIM115


# -------------------------------------------------------------------------------------------------
# --quick models and the CLI
# -------------------------------------------------------------------------------------------------

TINY_DIT = dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                sample_size=8, patch_size=2, num_embeds_ada_norm=10)  # fmt: skip
TINY_VAE = dict(block_out_channels=(128, 128), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, sample_size=16)  # fmt: skip


def quick_models(cfg, root: str) -> None:
    """Random tiny DiT + VAE of ours (the shapes of diffusers' tiny configs above; every weight
    N(0, 0.05^2) so the adaLN-Zero DiT is not the zero function), set as the paths of `cfg.pretrained`
    when its files are missing. Each process writes its own copy (`root/p<index>`, the same bits: fixed
    keys), so no host waits for another and no file system needs to be shared."""
    from flax import nnx

    from diffusion_jax.convert import api, dit, vae
    from diffusion_jax.models import build_model

    p = cfg.pretrained
    if p.get("autoencoder") is None or os.path.isfile(p.denoiser.path) and os.path.isfile(p.autoencoder.path):
        return
    root = os.path.join(root, f"p{jax.process_index()}")
    p.denoiser.path = os.path.join(root, "dit_tiny.safetensors")
    p.autoencoder.path = os.path.join(root, "vae_tiny.safetensors")
    if os.path.isfile(p.autoencoder.path + ".sha256"):
        return
    os.makedirs(root, exist_ok=True)
    vcfg, extra = vae.config_from_diffusers(TINY_VAE)
    for i, (mcfg, out, ex) in enumerate(((dit.diffusers_config(TINY_DIT), p.denoiser.path, {}),
                                         (vcfg, p.autoencoder.path, extra))):  # fmt: skip
        model = build_model(mcfg, rngs=nnx.Rngs(i))
        leaves, tdef = jax.tree.flatten(nnx.state(model))
        keys = jax.random.split(jax.random.key(i), len(leaves))
        noisy = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
        nnx.update(model, jax.tree.unflatten(tdef, noisy))
        api.save_model(out, model, mcfg, extra=ex)  # with its .sha256 checksum file


def main(argv=None) -> int:
    """`python -m experiments.benchmark_samplers --config=configs/pretrained/... [options]`."""
    from diffusion_jax.training import distributed, overrides

    argv = sys.argv if argv is None else argv
    spec, sets = overrides.pop_config_args(argv)
    a = parse_args([x for x in argv[1:] if not x.startswith("--config")])
    if spec is None:
        print("error: --config=configs/pretrained/...py[:variant] is required", file=sys.stderr)
        return 2
    if a.num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", a.num_cpu_devices)
    if a.coordinator_address or a.num_processes:
        distributed.initialize(a.coordinator_address or None, a.num_processes or None,
                               None if a.process_id < 0 else a.process_id, cpu_collectives=a.cpu_collectives or None)  # fmt: skip
    cfg = overrides.apply_overrides(overrides.load_config_arg(spec), sets)
    try:
        rows = run(cfg, a)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        for r in rows:
            print(json.dumps(r))
    return 0
