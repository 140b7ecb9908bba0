"""Frechet distance between feature Gaussians, and mean / covariance statistics reduced across devices.

FID (Heusel et al. 2017, Sec. 4, eq. unnumbered after "Frechet distance"): for feature statistics
(mu1, S1), (mu2, S2),

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).

tr (S1 S2)^{1/2} equals the sum of sqrt(eigenvalues) of the symmetric PSD matrix S1^{1/2} S2 S1^{1/2}
(S1 S2 is similar to it), which `frechet_distance` computes with two symmetric eigendecompositions in
float64: no complex parts and no failure on singular covariances (fewer samples than dimensions).

Statistics are accumulated batch by batch: each batch (sharded over devices / processes) is reduced on
device to (count, mean, centred scatter) -- sums over the batch axis, which XLA all-reduces; features
are never gathered -- and batches are merged on the host in float64 with the pairwise update of Chan,
Golub & LeVeque (1979, "Updating formulae and a pairwise algorithm for computing sample variances").
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2). mu: [d], sigma: [d, d] PSD.

    This is what FID reports (pytorch-fid's `calculate_frechet_distance`), computed in float64.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"statistics must be mu [d] and sigma [d, d] of one d, got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2.0), 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


@jax.jit
def batch_moments(features: jax.Array, mask: jax.Array | None = None):
    """Per-batch (count, mean [d], centred scatter [d, d]) of features [B, d] where mask [B] (1 = real
    row, 0 = padding) is set. Works on batch-sharded inputs: the sums are reduced across devices."""
    f = features.astype(jnp.float32).reshape(features.shape[0], -1)
    w = jnp.ones(f.shape[0], f.dtype) if mask is None else mask.astype(f.dtype)
    n = jnp.sum(w)
    mean = jnp.sum(f * w[:, None], axis=0) / jnp.maximum(n, 1.0)
    c = (f - mean) * w[:, None]
    scatter = jnp.einsum("bi,bj->ij", c, c, precision=jax.lax.Precision.HIGHEST)
    return n, mean, scatter


class MomentAccumulator:
    """Running mean and covariance (float64, host) of features fed in batches. Mutable by design: it is
    the sink of a stream; `add` is cheap, `statistics()` gives (mu [d], sigma [d, d]) (sigma unbiased,
    ddof = 1, as numpy.cov / pytorch-fid)."""

    def __init__(self):
        self.n = 0.0
        self.mean = None
        self.scatter = None

    def add_moments(self, n, mean, scatter) -> None:
        """Merge one batch's (count, mean, centred scatter) (Chan et al. 1979, pairwise update)."""
        n = float(np.asarray(n))
        if n == 0:
            return
        mean = np.asarray(mean, np.float64)
        scatter = np.asarray(scatter, np.float64)
        if self.mean is None:
            self.n, self.mean, self.scatter = n, mean, scatter
            return
        total = self.n + n
        delta = mean - self.mean
        self.scatter = self.scatter + scatter + np.outer(delta, delta) * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total

    def add(self, features, mask=None) -> None:
        """Add a batch of features [B, d] (a numpy array or a possibly sharded jax.Array)."""
        self.add_moments(*jax.device_get(batch_moments(features, mask)))

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {int(self.n)}")
        return self.mean, self.scatter / (self.n - 1.0)


def save_statistics(path: str | os.PathLike, mu, sigma, **meta) -> None:
    """Write reference statistics as `.npz` with keys mu, sigma (pytorch-fid's names) and any extra
    scalar/string metadata (e.g. num_images, features='inception_pool3')."""
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, mu=np.asarray(mu), sigma=np.asarray(sigma), **{k: np.asarray(v) for k, v in meta.items()})
    os.replace(tmp, path)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu [d], sigma [d, d]) from an `.npz` with keys mu, sigma (ours or pytorch-fid's)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"reference statistics {str(path)!r} not found (make them with `python -m diffusion_jax.reference_statistics`)"
        )
    with np.load(path) as f:
        if "mu" not in f.files or "sigma" not in f.files:
            raise ValueError(f"{str(path)!r} lacks 'mu' / 'sigma' (has {sorted(f.files)})")
        return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
