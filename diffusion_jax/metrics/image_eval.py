"""Image-model evaluation: FID, KID, the Fashion-MNIST feature distance, precision/recall and bits/dim.

`evaluate_images(eval_cfg, samples, real=..., denoiser=...)` is the one call `diffusion_jax.evaluate`
makes for image runs. It computes what `eval_cfg.metrics` asks for:

  fid               Frechet distance of InceptionV3 pool3 features (`eval.inception_weights`: a converted
                    pytorch-fid weights file) between samples and real images (or `eval.reference_stats`,
                    an .npz with mu / sigma, when no other metric needs real Inception features)
  kid               KID on the same features (x 1e3 is what papers print; we report the raw value)
  fd_classifier     Frechet distance of the Fashion-MNIST classifier's penultimate features
                    (`eval.classifier_path`, made by `make fmnist_classifier`)
  precision_recall  improved precision / recall (k = `eval.pr_k`) on `eval.pr_features` features
  bpd               probability-flow ODE bits/dim of `eval.bpd_num_images` real images (Hutchinson
                    `eval.bpd_divergence`, tolerance `eval.bpd_rtol`)
  bpd_elbo          the VDM ELBO bits/dim of the same images (`eval.bpd_num_t` logSNR draws per image)

On a class- or caption-conditional run, bits/dim scores the unconditional model log p(x) (the null
label / empty caption), which the run trained through classifier-free-guidance dropout;
`diffusion_jax.evaluate` refuses bpd on a conditional run trained without it.

Features are computed batch-sharded over all devices and processes (`features.feature_statistics`); the
per-record randomness of bits/dim comes from (eval.seed, image index). The numbers therefore do not
depend on the device or process count (up to float reduction order).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

# The metric modules (jax, flax, diffrax) are imported where used: config validation imports this
# module for IMAGE_METRICS / validate only.

IMAGE_METRICS = ("fid", "kid", "fd_classifier", "precision_recall", "bpd", "bpd_elbo")
PR_FEATURES = ("classifier", "inception")
DIVERGENCES = ("rademacher", "gaussian", "exact")

DEFAULTS = {
    "inception_weights": "",
    "classifier_path": "",
    "reference_stats": "",
    "reference_split": "test",
    "num_reference": 0,  # 0 = eval.num_samples
    "pr_features": "classifier",
    "pr_k": 3,
    "kid_subsets": 100,
    "kid_subset_size": 1000,
    "bpd_num_images": 64,
    "bpd_divergence": "rademacher",
    "bpd_rtol": 1e-5,
    "bpd_num_t": 8,
    "batch_size": 64,
    "seed": 0,
}


def settings(eval_cfg) -> dict:
    """eval_cfg's image-metric fields with DEFAULTS for the missing ones."""
    return {k: eval_cfg.get(k, v) for k, v in DEFAULTS.items()}


def _extractors(metrics, s) -> set[str]:
    need = set()
    if "fid" in metrics or "kid" in metrics:
        need.add("inception")
    if "fd_classifier" in metrics:
        need.add("classifier")
    if "precision_recall" in metrics:
        need.add(s["pr_features"])
    return need


def validate(eval_cfg, check_files: bool = True) -> None:
    """Check the image-metric fields of `eval_cfg` (names, numbers and, with `check_files`, the weight
    files the requested metrics need) before any compilation. Raises ValueError naming the field and
    the valid choices, FileNotFoundError for a missing file (saying how to make it)."""
    metrics = [m for m in eval_cfg.metrics if m in IMAGE_METRICS]
    s = settings(eval_cfg)
    if s["pr_features"] not in PR_FEATURES:
        raise ValueError(
            f"eval.pr_features={s['pr_features']!r} is invalid; valid choices: {list(PR_FEATURES)}"
        )
    if s["bpd_divergence"] not in DIVERGENCES:
        raise ValueError(
            f"eval.bpd_divergence={s['bpd_divergence']!r} is invalid; valid choices: {list(DIVERGENCES)}"
        )
    for name in ("pr_k", "kid_subsets", "bpd_num_images", "bpd_num_t", "batch_size"):
        if isinstance(s[name], bool) or not isinstance(s[name], int) or s[name] < 1:
            raise ValueError(f"eval.{name}={s[name]!r} must be an integer >= 1")
    if (
        isinstance(s["kid_subset_size"], bool)
        or not isinstance(s["kid_subset_size"], int)
        or s["kid_subset_size"] < 2
    ):
        raise ValueError(f"eval.kid_subset_size={s['kid_subset_size']!r} must be an integer >= 2")
    if not isinstance(s["num_reference"], int) or s["num_reference"] < 0:
        raise ValueError(f"eval.num_reference={s['num_reference']!r} must be an integer >= 0")
    if not (isinstance(s["bpd_rtol"], int | float) and s["bpd_rtol"] > 0):
        raise ValueError(f"eval.bpd_rtol={s['bpd_rtol']!r} must be a number > 0")
    if not check_files:
        return
    from diffusion_jax.metrics import classifier, inception_weights

    need = _extractors(metrics, s)
    if "inception" in need and not os.path.isfile(s["inception_weights"] or ""):
        raise FileNotFoundError(
            "eval.inception_weights: "
            + inception_weights.MISSING_MSG.format(path=s["inception_weights"] or "X.npz")
        )
    if "classifier" in need and not os.path.isfile(s["classifier_path"] or ""):
        raise FileNotFoundError(
            f"eval.classifier_path={s['classifier_path']!r} not found; train it with `{classifier.MAKE_TARGET}` "
            f"or `{classifier.TRAIN_COMMAND}`"
        )
    if s["reference_stats"] and not os.path.isfile(s["reference_stats"]):
        raise FileNotFoundError(f"eval.reference_stats={s['reference_stats']!r} not found")


def require_file(field: str, path: str) -> None:
    """One-line FileNotFoundError naming `eval.<field>` (inception_weights or reference_stats), the
    missing `path` and how to make the file; nothing when it exists."""
    if os.path.isfile(path or ""):
        return
    if field == "inception_weights":
        from diffusion_jax.metrics import inception_weights

        how = (
            f"download {inception_weights.PUBLISHED_URL} and run `python -m diffusion_jax.metrics.inception_weights "
            f"pt_inception-2015-12-05-6726825d.pth {path or 'X.npz'}`"
        )
    else:
        how = (
            "supply the published statistics (an .npz with mu / sigma, e.g. ADM's VIRTUAL_imagenet256_labeled.npz) "
            "or make them with `python -m diffusion_jax.reference_statistics --features=inception "
            "--weights=... --tfds=<dataset> --out=...`"
        )
    raise FileNotFoundError(f"eval.{field}={path!r} not found; {how}")


def needs_real_images(eval_cfg) -> bool:
    """Whether the metrics `eval_cfg.metrics` asks for need real images (FID alone with
    `eval.reference_stats` does not; every other metric, and FID without statistics, does)."""
    metrics = [m for m in eval_cfg.metrics if m in IMAGE_METRICS]
    s = settings(eval_cfg)
    need = _extractors(metrics, s) - ({"inception"} if s["reference_stats"] and metrics == ["fid"] else set())
    return bool(need) or "bpd" in metrics or "bpd_elbo" in metrics


def _feature_fns(need, s) -> dict[str, Callable]:
    from diffusion_jax.metrics import classifier, inception, inception_weights

    fns = {}
    if "inception" in need:
        g, st = inception_weights.load_inception(s["inception_weights"])
        fns["inception"] = inception.feature_fn(g, st)
    if "classifier" in need:
        g, st, _ = classifier.load(s["classifier_path"])
        fns["classifier"] = classifier.feature_fn(g, st)
    return fns


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img")
    return bar, bar.update


def _stats(fn, n, read, s, keep, mesh, progress, desc):
    from diffusion_jax.metrics import features

    bar, cb = _bar(progress, n, desc)
    try:
        batches = features.dataset_batches(n, read, s["batch_size"])
        return features.feature_statistics(
            fn, batches, batch_size=s["batch_size"], mesh=mesh, keep=keep, progress=cb
        )
    finally:
        if bar is not None:
            bar.close()


def _bits_per_dim(metrics, s, real, denoiser, mesh, progress) -> dict:
    from diffusion_jax.metrics import bpd, features

    n_real, read = real
    n = min(int(s["bpd_num_images"]), n_real)
    out = {}
    for name in ("bpd", "bpd_elbo"):
        if name not in metrics:
            continue
        if name == "bpd":
            kw = {"divergence_method": s["bpd_divergence"], "rtol": s["bpd_rtol"], "atol": s["bpd_rtol"]}
            if s["bpd_divergence"] != "exact":
                kw["num_probes"] = 1

            def fn(idx, x, kw=kw):
                return bpd.ode_bits_per_dim(denoiser, x, bpd.sample_keys(s["seed"], idx), **kw)
        else:

            def fn(idx, x):
                return bpd.elbo_bits_per_dim(
                    denoiser, x, bpd.sample_keys(s["seed"], idx), num_t=s["bpd_num_t"]
                )

        bar, cb = _bar(progress, n, name)
        batches = features.dataset_batches(n, read, s["batch_size"])
        _, vals = features.map_records(fn, batches, batch_size=s["batch_size"], mesh=mesh, progress=cb)
        if bar is not None:
            bar.close()
        v = np.asarray(vals[0] if isinstance(vals, tuple) else vals, np.float64)
        out[name] = float(np.mean(v))
        out[f"{name}_sem"] = float(np.std(v) / np.sqrt(len(v)))
        if isinstance(vals, tuple):
            out["bpd_nfe"] = float(np.mean(vals[1]))
    return out


def evaluate_images(
    eval_cfg,
    samples: np.ndarray,
    *,
    real: tuple[int, Callable[[np.ndarray], np.ndarray]] | None,
    denoiser=None,
    mesh=None,
    progress: bool = False,
) -> dict[str, float]:
    """The image metrics `eval_cfg.metrics` asks for (module doc).

    samples: [N, H, W, C] model samples in [-1, 1] (the same array on every process). real: (number of
    records, read(indices) -> uint8 [b, H, W, C]) of the reference split, or None when no metric needs
    real images. denoiser: the run's `Denoiser` (bits/dim only). Returns {metric: value}.
    """
    metrics = [m for m in eval_cfg.metrics if m in IMAGE_METRICS]
    if not metrics:
        return {}
    validate(eval_cfg)
    from diffusion_jax.metrics import features, fid, kid
    from diffusion_jax.metrics import precision_recall as pr

    s = settings(eval_cfg)
    need = _extractors(metrics, s)
    if needs_real_images(eval_cfg) and real is None:
        raise ValueError(f"eval.metrics={metrics} need real images (a TFDS image dataset in data.*)")
    if ("bpd" in metrics or "bpd_elbo" in metrics) and denoiser is None:
        raise ValueError("eval.metrics bpd / bpd_elbo need the run's denoiser")
    samples = np.asarray(samples)
    n = len(samples)
    n_ref = min(int(s["num_reference"] or n), real[0]) if real is not None else 0
    fns = _feature_fns(need, s)
    out: dict[str, float] = {}
    for name, fn in fns.items():
        keep_fake = (
            n
            if ("kid" in metrics and name == "inception")
            or ("precision_recall" in metrics and name == s["pr_features"])
            else 0
        )
        fake = _stats(fn, n, features.array_reader(samples), s, keep_fake, mesh, progress, f"{name} samples")
        if name == "inception" and s["reference_stats"] and metrics == ["fid"]:
            mu_r, sigma_r = fid.load_statistics(s["reference_stats"])
            ref = features.FeatureResult(mu_r, sigma_r, 0, None)
        else:
            ref = _stats(
                fn, n_ref, real[1], s, n_ref if keep_fake else 0, mesh, progress, f"{name} reference"
            )
        if name == "inception" and "fid" in metrics:
            out["fid"] = fid.frechet_distance(fake.mu, fake.sigma, ref.mu, ref.sigma)
        if name == "inception" and "kid" in metrics:
            out["kid"], out["kid_std"] = kid.kid(
                fake.features,
                ref.features,
                num_subsets=s["kid_subsets"],
                subset_size=s["kid_subset_size"],
                seed=s["seed"],
            )
        if name == "classifier" and "fd_classifier" in metrics:
            out["fd_classifier"] = fid.frechet_distance(fake.mu, fake.sigma, ref.mu, ref.sigma)
        if "precision_recall" in metrics and name == s["pr_features"]:
            k = min(int(s["pr_k"]), len(fake.features) - 1, len(ref.features) - 1)
            out["precision"], out["recall"] = pr.precision_recall(ref.features, fake.features, k)
    if "bpd" in metrics or "bpd_elbo" in metrics:
        out.update(_bits_per_dim(metrics, s, real, denoiser, mesh, progress))
    return out
