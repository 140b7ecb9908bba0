"""Frechet distance, KID, precision/recall and sharded feature statistics against independent references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from diffusion_jax.metrics import features, fid, kid, precision_recall


def scipy_frechet(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid's formula (calculate_frechet_distance), transcribed: scipy sqrtm of S1 S2."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    covmean = covmean.real
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def frechet_from_features(f1, f2) -> float:
    """Squared Frechet distance of the Gaussians fitted to feature rows f1 [n1, d], f2 [n2, d] (mean and
    ddof-1 covariance, as pytorch-fid), exactly and in O(n^2 d): with centred rows X1, X2,
    S1 S2 = X1^T (X1 X2^T) X2 / ((n1-1)(n2-1)) has the nonzero eigenvalues of M M^T, M = X1 X2^T,
    so tr sqrt(S1 S2) = ||M||_* / sqrt((n1-1)(n2-1)) (nuclear norm). For few samples of 2048-d
    features this avoids scipy's sqrtm of a singular 2048 x 2048 matrix (seconds, and pytorch-fid then
    adds an eps offset: an approximation); `test_feature_identity_matches_scipy_sqrtm_formula` checks
    it against the sqrtm formula."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    x1, x2 = f1 - f1.mean(0), f2 - f2.mean(0)
    c1, c2 = len(f1) - 1.0, len(f2) - 1.0
    nuclear = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum()
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + np.sum(x1**2) / c1 + np.sum(x2**2) / c2 - 2.0 * nuclear / np.sqrt(c1 * c2))


@pytest.mark.parametrize("n1,n2", [(60, 50), (7, 9)], ids=["full-rank", "rank-deficient"])
def test_feature_identity_matches_scipy_sqrtm_formula(n1, n2):
    rng = np.random.default_rng(n1)
    f1 = rng.normal(size=(n1, 12)) @ rng.normal(size=(12, 12))
    f2 = rng.normal(0.5, 1.0, size=(n2, 12)) @ rng.normal(size=(12, 12))
    stats = [f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)]
    assert frechet_from_features(f1, f2) == pytest.approx(scipy_frechet(*stats), rel=1e-6)


def _cov(rng, d, n):
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    return np.cov(a, rowvar=False)


@pytest.mark.parametrize("d,n", [(8, 200), (32, 100), (32, 20)], ids=["full", "wellcond", "rank-deficient"])
def test_frechet_matches_scipy_sqrtm_formula(d, n):
    rng = np.random.default_rng(d + n)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _cov(rng, d, n), _cov(rng, d, n)
    want = scipy_frechet(mu1, s1, mu2, s2)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(want, rel=1e-6)
    # float32 statistics (what the accumulator's users may pass) give the same number
    assert fid.frechet_distance(*(np.float32(a) for a in (mu1, s1, mu2, s2))) == pytest.approx(want, rel=1e-4)


def test_frechet_near_singular_closed_form():
    """Commuting (diagonal) covariances with eigenvalues down to 1e-12: tr sqrt(S1 S2) = sum sqrt(a_i b_i)."""
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(0.5, 2.0, 20), np.full(12, 1e-12), np.zeros(4)])
    b = np.concatenate([rng.uniform(0.5, 2.0, 20), rng.uniform(0.0, 1e-10, 16)])
    q, _ = np.linalg.qr(rng.normal(size=(36, 36)))  # same rotation keeps them commuting
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.normal(size=36), rng.normal(size=36)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        want, rel=1e-8
    )  # sqrt of ~1e-16 rounding: ~1e-8 each
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="statistics must be"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_moment_accumulator_matches_numpy_cov():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(101, 6)) @ rng.normal(size=(6, 6))
    acc = fid.MomentAccumulator()
    for lo, hi in [(0, 1), (1, 40), (40, 41), (41, 101)]:
        acc.add(x[lo:hi])
    padded = np.concatenate([x[:7], np.full((3, 6), 1e3)])  # padding rows are masked out
    acc2 = fid.MomentAccumulator()
    acc2.add(padded, np.array([1.0] * 7 + [0.0] * 3))
    acc2.add(x[7:])
    for a in (acc, acc2):
        mu, sigma = a.statistics()
        np.testing.assert_allclose(mu, x.mean(0), rtol=1e-5)
        np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        fid.MomentAccumulator().statistics()


def _toy_feature_fn(x):
    w = jnp.linspace(-1.0, 1.0, x[0].size * 5).reshape(x[0].size, 5)
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w)


def test_feature_statistics_1_vs_8_devices(tmp_path):
    assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(45, 4, 4, 1), dtype=np.uint8)
    feats = np.asarray(_toy_feature_fn(images.astype(np.float32) / 255.0), np.float64)
    results = []
    for n_dev in (1, 8):
        mesh = jax.make_mesh((n_dev,), ("data",), devices=jax.devices()[:n_dev])
        batches = features.dataset_batches(45, features.array_reader(images), 10)
        fn = lambda x: _toy_feature_fn(x.astype(jnp.float32) / 255.0)  # noqa: E731
        results.append(features.feature_statistics(fn, batches, batch_size=10, mesh=mesh, keep=30))
    for r in results:
        assert r.count == 45
        np.testing.assert_allclose(r.mu, feats.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.sigma, np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(r.features, feats[:30], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0].sigma, results[1].sigma, rtol=1e-5, atol=1e-7)
    # per-record outputs come back in record order on any layout
    outs = []
    for n_dev in (1, 8):
        mesh = jax.make_mesh((n_dev,), ("data",), devices=jax.devices()[:n_dev])
        batches = features.dataset_batches(45, features.array_reader(images), 10)
        fn = lambda i, x: (i * 2, jnp.sum(x.astype(jnp.float32), axis=(1, 2, 3)))  # noqa: E731
        outs.append(features.map_records(fn, batches, batch_size=10, mesh=mesh))
    for idx, (twice, sums) in outs:
        np.testing.assert_array_equal(idx, np.arange(45))
        np.testing.assert_array_equal(twice, 2 * np.arange(45))
        np.testing.assert_allclose(sums, images.reshape(45, -1).sum(1).astype(np.float32))
    path = str(tmp_path / "ref.npz")
    fid.save_statistics(path, results[1].mu, results[1].sigma, num_images=45)
    mu, sigma = fid.load_statistics(path)
    np.testing.assert_array_equal(mu, results[1].mu)
    np.testing.assert_array_equal(sigma, results[1].sigma)


def test_uint8_images_rounds_like_png():
    x = jnp.asarray([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5])
    want = np.clip(np.round((np.asarray(x) + 1) * 127.5), 0, 255) / 255.0
    np.testing.assert_allclose(features.uint8_images(x), want, rtol=0, atol=1e-7)


def numpy_cubic_mmd2(x, y):
    """Direct double-sum transcription of the unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_kid_matches_direct_formula():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 5)), rng.normal(0.3, 1.2, size=(25, 5))
    want = numpy_cubic_mmd2(x, y)
    assert kid.polynomial_mmd2(x, y) == pytest.approx(want, rel=1e-4, abs=1e-6)
    # subsets as large as the sets: every subset is a permutation, so the mean is the full estimate
    mean, std = kid.kid(x, y[:20], num_subsets=3, subset_size=1000)
    assert mean == pytest.approx(numpy_cubic_mmd2(x, y[:20]), rel=1e-4) and std == pytest.approx(
        0.0, abs=1e-5
    )
    # proper subsets: the mean of the direct formula on the same draws
    rng2 = np.random.default_rng(7)
    draws = [(rng2.choice(20, 10, replace=False), rng2.choice(25, 10, replace=False)) for _ in range(4)]
    want_sub = np.mean([numpy_cubic_mmd2(x[i], y[j]) for i, j in draws])
    assert kid.kid(x, y, num_subsets=4, subset_size=10, seed=7)[0] == pytest.approx(want_sub, rel=1e-4)


def brute_force_pr(real, fake, k):
    def radii(a):
        d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def cov(q, ref, r):
        d = np.sqrt(((q[:, None] - ref[None]) ** 2).sum(-1))
        return np.mean((d <= r[None]).any(1))

    return cov(fake, real, radii(real)), cov(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_brute_force(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(150, 6))
    fake = np.concatenate([rng.normal(size=(80, 6)) * 0.5, rng.normal(3.0, 1.0, size=(40, 6))])
    want = brute_force_pr(real, fake, k)
    got = precision_recall.precision_recall(real, fake, k)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.2 < got[0] < 0.95 and 0.05 < got[1] < 0.95  # neither trivially 0 nor 1
    with pytest.raises(ValueError, match="k must be"):
        precision_recall.knn_radii(real[:3], k=3)
