r"""FID against NFE of a pretrained model, for a sampler x grid x NFE table (issue 14).

For a pretrained config (`configs/pretrained/*`: converted published weights), every selected
sampler runs on every selected grid at each target NFE (the largest step count whose NFE, by the
sampler's own accounting, fits; grids end with a final step to t = 0). It draws seeds
0..num_samples-1 through the one sampling engine (`convert.pretrained.make_plan`, so seed s is the
sample `diffusion_jax.sample` writes for it) and decodes latent models through their VAE. FID
(Heusel et al. 2017) uses InceptionV3 pool3 features (`metrics.inception`, 8-bit quantised images)
against reference statistics (`--reference`, an `.npz` with mu / sigma, e.g. the ADM ImageNet
reference batches' statistics). `--inception` / `--reference` default to the config's
`eval.inception_weights` / `eval.reference_stats`, the files `diffusion_jax.evaluate` uses; the Inception
network, its 8-bit input quantisation and the Frechet distance are `metrics.inception` / `metrics.fid`,
as in `metrics.image_eval`.

Resumable: each finished row is appended to `<out>/results.jsonl` and skipped when the run is
repeated with the same settings; `results.md` is rewritten at the end. Multi-host: each process
draws its own block of seeds and the feature moments are summed over processes.

    python -m experiments.benchmark_pretrained --config=configs/pretrained/dit_xl2.py:256 \
        --samplers=ddim,dpmpp_2m,unipc --grids=leading,karras --nfe=10,20,50 --num_samples=10000 \
        --inception=checkpoints/pt_inception.npz --reference=VIRTUAL_imagenet256_labeled_stats.npz \
        --out=experiments/results/dit_xl2_256

`--quick` (tests): random Inception weights unless given, and without `--reference` the reference is
the statistics of the config's own sampler and grid on seeds 10**6.. (a self-consistency FID, not
comparable to published numbers). `--features=pixels` replaces Inception by pooled pixels (tests).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

from diffusion_jax.convert import pretrained
from diffusion_jax.metrics import fid, image_eval, inception, inception_weights
from diffusion_jax.samplers import registry
from diffusion_jax.training import overrides

REFERENCE_SEED = 10**6
FEATURES = ("inception", "pixels")
KEY = ("sampler", "grid", "nfe_target", "num_samples", "weights", "features")


def pixel_features(images) -> np.ndarray:
    """A cheap stand-in for Inception features (tests): images [B, H, W, C] in [0, 1] average-pooled to
    at most 8 x 8 and flattened -> [B, <= 64 C]. The Frechet distance of these is the same formula."""
    x = np.asarray(images, np.float64)
    b, h, w, c = x.shape
    f = max(h // 8, 1)
    return x[:, : h // f * f, : w // f * f].reshape(b, h // f, f, w // f, f, c).mean((2, 4)).reshape(b, -1)


def steps_for_nfe(sampler, schedule, grid: str, target: int) -> int:
    """The largest step count whose sampled grid (`grid`, final step to t = 0) costs <= target NFE by
    the sampler's own accounting, as the engine's plan counts it."""
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


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark_pretrained")
    p.add_argument("--samplers", default="ddim,dpmpp_2m")
    p.add_argument("--grids", default="leading")
    p.add_argument("--nfe", default="10,20,50")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--inception", default="", help="converted FID Inception weights (.npz)")
    p.add_argument("--reference", default="", help="reference statistics .npz (mu, sigma)")
    p.add_argument("--out", required=True)
    p.add_argument("--features", default="inception", choices=FEATURES)
    p.add_argument("--quick", action="store_true")
    return p.parse_args(argv)


def _csv(s: str) -> list[str]:
    return [x for x in (v.strip() for v in s.split(",")) if x]


def _moments(plan, seeds: list[int], featurize) -> fid.MomentAccumulator:
    """Feature moments of `seeds` (this process's block), summed over processes."""
    acc = fid.MomentAccumulator()
    pi, pc = jax.process_index(), jax.process_count()
    for c in plan.stream(seeds, devices=jax.local_devices(), process_index=pi, process_count=pc):
        x = plan.decode(c.samples) if plan.decode is not None else c.samples
        if np.shape(x)[-1] not in (1, 3):
            raise ValueError(f"samples of shape {np.shape(x)[1:]} are not images (1 or 3 channels)")
        acc.add(np.asarray(featurize(inception.to_unit_interval(x))))
    if pc > 1:
        from jax.experimental import multihost_utils

        n, mean, scatter = (
            multihost_utils.process_allgather(np.asarray(v)) for v in (acc.n, acc.mean, acc.scatter)
        )
        acc = fid.MomentAccumulator()
        for i in range(pc):
            acc.add_moments(n[i], mean[i], scatter[i])
    return acc


def _variant(cfg, sampler: str, grid: str, steps: int):
    c = copy.deepcopy(cfg)
    c.sampler.name, c.sampler.kwargs = sampler, {}
    c.grid.name, c.grid.num_steps, c.grid.kwargs = grid, steps, {"final_zero": True}
    return c


def run(cfg, a) -> list[dict]:
    """All rows of the table (loading finished ones from results.jsonl)."""
    samplers, grids, nfes = _csv(a.samplers), _csv(a.grids), [int(x) for x in _csv(a.nfe)]
    for s in samplers:
        registry.get_sampler(s)  # names checked before anything is compiled
    if a.features == "inception" and not a.quick:  # the files `evaluate` uses for this config (eval.*)
        a.inception = a.inception or cfg.eval.get("inception_weights", "")
        a.reference = a.reference or cfg.eval.get("reference_stats", "")
        image_eval.require_file("inception_weights", a.inception)
        image_eval.require_file("reference_stats", a.reference)
    pretrained.check_files(cfg.pretrained)
    pre = pretrained.load_pretrained(cfg)  # loaded once, every row's plan shares it
    base = pretrained.make_plan(cfg, pre)
    schedule = base.denoiser.schedule
    if a.features == "pixels":
        featurize = pixel_features
    else:
        gs = (
            inception_weights.load_inception(a.inception)
            if a.inception or not a.quick
            else nnx.split(inception.create(0, abstract=False))  # --quick: random weights
        )

        def featurize(x):
            return inception.pool3_features(*gs, x)

    os.makedirs(a.out, exist_ok=True)
    if a.reference:
        mu_r, sig_r = fid.load_statistics(a.reference)
    elif a.quick:
        top = _variant(cfg, cfg.sampler.name, cfg.grid.name, cfg.grid.num_steps)
        seeds = list(range(REFERENCE_SEED, REFERENCE_SEED + a.num_samples))
        mu_r, sig_r = _moments(pretrained.make_plan(top, pre), seeds, featurize).statistics()
    else:
        raise ValueError("--reference is required (reference statistics .npz), except with --quick")
    path = os.path.join(a.out, "results.jsonl")
    done = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                done[tuple(r[k] for k in KEY)] = r
    rows = []
    for s in samplers:
        smp = registry.get_sampler(s)
        for g in grids:
            for target in nfes:
                key = (s, g, target, a.num_samples, base.meta["weights"], a.features)
                if key in done:
                    rows.append(done[key])
                    continue
                steps = steps_for_nfe(smp, schedule, g, target)
                plan = pretrained.make_plan(_variant(cfg, s, g, steps), pre)
                t0 = time.perf_counter()
                mu, sig = _moments(plan, list(range(a.num_samples)), featurize).statistics()
                row = dict(zip(KEY, key, strict=True))
                row.update(steps=steps, nfe=plan.meta["nfe"], fid=fid.frechet_distance(mu, sig, mu_r, sig_r),
                           seconds=round(time.perf_counter() - t0, 2))  # fmt: skip
                rows.append(row)
                if jax.process_index() == 0:
                    with open(path, "a") as f:
                        f.write(json.dumps(row) + "\n")
    if jax.process_index() == 0:
        lines = ["| sampler | grid | NFE | steps | FID |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['sampler']} | {r['grid']} | {r['nfe']} | {r['steps']} | {r['fid']:.3f} |" for r in rows
        ]
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(
                f"FID of {base.meta.get('pretrained')} ({a.num_samples} samples)\n\n"
                + "\n".join(lines)
                + "\n"
            )
    return rows


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    spec, sets = overrides.pop_config_args(argv)
    rest = [x for x in argv[1:] if not x.startswith("--config")]
    a = _args(rest)
    if spec is None:
        print("error: --config=configs/pretrained/...py[:variant] is required", file=sys.stderr)
        return 2
    cfg = overrides.apply_overrides(overrides.load_config_arg(spec), sets)
    try:
        rows = run(cfg, a)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
