"""2-D toy distributions with pinned definitions, as pure JAX samplers.

Each sampler is ``fn(key, n) -> x [n, 2] float32``, jit- and vmap-compatible. The definitions follow the
code of two reference repositories exactly (constants and the order of operations); where that code draws a
deterministic grid or an exact half/half split we sample the i.i.d. distribution the grid approximates
(noted per dataset), so that every sample can be drawn from its own key.

``gaussian``
    Standard normal ``N(0, I_2)``: the usual source distribution for toy flows and couplings.

``8gaussians``  -- torchcfm (Tong et al. 2023, "Improving and generalizing flow-based generative models
with minibatch optimal transport", arXiv:2302.00482), ``torchcfm/utils.py::sample_8gaussians`` =
``eight_normal_sample(n, 2, scale=5, var=0.1)``:
    centre ``c_k = 5 * u_k``, ``u_k`` the 8 unit vectors at angles ``k * pi / 4`` (radius 5), the centre
    drawn uniformly; plus Gaussian noise with covariance ``sqrt(0.1) * I``. NB: torchcfm passes
    ``math.sqrt(var) * I`` as the *covariance* matrix of ``MultivariateNormal``, so the per-coordinate
    variance is ``sqrt(0.1) = 0.3162`` and the std is ``0.1 ** 0.25 = 0.5623`` (not 1 and not
    ``sqrt(0.1)``); we pin that actual behaviour. Mean 0, per-coordinate variance ``12.5 + 0.3162``.

``moons``  -- torchcfm ``torchcfm/utils.py::sample_moons`` = ``generate_moons(n, noise=0.2) * 3 - 1`` with
torchdyn's ``generate_moons`` (``torchdyn/datasets/static_datasets.py``):
    upper arc ``(cos t, sin t)``, lower arc ``(1 - cos t, 1/2 - sin t)``, ``t`` in ``[0, pi]``; ONE uniform
    ``U[0, 0.2)`` offset is added to *both* coordinates of a point (torchdyn adds ``rand(n, 1) * noise``,
    broadcast over the two columns), then every coordinate is mapped ``v -> 3 v - 1``. torchdyn puts
    ``t`` on a ``linspace`` grid with exactly ``n // 2`` upper points; we draw ``t ~ U[0, pi]`` and the
    arc ``~ Bernoulli(1/2)`` (the ``n -> inf`` limit). Mean ``(0.8, 0.05)``.

``checkerboard``  -- FFJORD (Grathwohl et al. 2019, arXiv:1810.01367), ``lib/toy_data.py``,
``inf_train_gen('checkerboard')``:
    ``x1 ~ U[-2, 2)``, ``x2 = U[0, 1) - 2 * Bernoulli(1/2) + (floor(x1) mod 2)``, then ``(x1, x2) * 2``:
    uniform on the 8 "black" squares of side 2 of a 4x4 board on ``[-4, 4]^2`` (density ``1/32``).

``spirals``  -- FFJORD ``inf_train_gen('2spirals')``:
    ``r = sqrt(U) * 540 * 2 pi / 360`` (= ``3 pi sqrt(U)``), ``d = (-cos(r) r + U'/2, sin(r) r + U''/2)``
    (three independent uniforms), the point is ``d`` or ``-d`` (FFJORD: exactly half each; here
    ``Bernoulli(1/2)``), divided by 3, plus ``N(0, 0.1^2 I)``. Symmetric, so the mean is 0.

``gmm``  -- the analytic mixture ``diffusion_jax.analytic.gmm_2d_ring()`` (this project's definition):
    8 equal-weight isotropic Gaussians, std 0.2, means on a circle of radius 2 at angles ``k * pi / 4``.
    Its exact denoiser, score and log-density are known (``analytic.GaussianMixture``), so a model trained
    on it can be compared with the optimal denoiser, and samples scored by their exact log-density.

Also a pair sampler (``sample_pair``) drawing independent source/target samples, e.g. torchcfm's
"8gaussians -> moons" experiment.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

# Pinned constants (see the module docstring for provenance).
EIGHT_GAUSSIANS_RADIUS = 5.0
EIGHT_GAUSSIANS_VAR = math.sqrt(0.1)  # torchcfm: covariance_matrix = sqrt(var) * I with var = 0.1.
MOONS_NOISE = 0.2
MOONS_SCALE = 3.0
MOONS_SHIFT = -1.0
CHECKERBOARD_SCALE = 2.0
SPIRALS_MAX_ANGLE = 540.0 * 2.0 * math.pi / 360.0
SPIRALS_UNIFORM_NOISE = 0.5
SPIRALS_DIVISOR = 3.0
SPIRALS_GAUSSIAN_STD = 0.1


def eight_gaussian_centers() -> Array:
    """The 8 mixture means ``5 * (cos(k pi/4), sin(k pi/4))``, ``k = 0..7``. Returns ``[8, 2]``."""
    angles = jnp.arange(8) * (jnp.pi / 4)
    return EIGHT_GAUSSIANS_RADIUS * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def sample_gaussian(key: Array, n: int) -> Array:
    """Standard normal ``N(0, I_2)``. Returns ``[n, 2]`` float32."""
    return jax.random.normal(key, (n, 2), jnp.float32)


def sample_8gaussians(key: Array, n: int) -> Array:
    """torchcfm's 8 Gaussians: radius 5, per-coordinate variance ``sqrt(0.1)``. Returns ``[n, 2]``."""
    k_idx, k_noise = jax.random.split(key)
    idx = jax.random.randint(k_idx, (n,), 0, 8)
    noise = jax.random.normal(k_noise, (n, 2), jnp.float32) * math.sqrt(EIGHT_GAUSSIANS_VAR)
    return eight_gaussian_centers()[idx].astype(jnp.float32) + noise


def sample_moons(key: Array, n: int) -> Array:
    """torchcfm's moons (torchdyn ``generate_moons(noise=0.2) * 3 - 1``). Returns ``[n, 2]``."""
    k_arc, k_t, k_u = jax.random.split(key, 3)
    lower = jax.random.bernoulli(k_arc, 0.5, (n,))
    t = jax.random.uniform(k_t, (n,), jnp.float32, 0.0, jnp.pi)
    upper_xy = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
    lower_xy = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=-1)
    xy = jnp.where(lower[:, None], lower_xy, upper_xy)
    # One offset per point, shared by both coordinates (torchdyn's rand(n, 1) broadcast).
    xy = xy + MOONS_NOISE * jax.random.uniform(k_u, (n, 1), jnp.float32)
    return MOONS_SCALE * xy + MOONS_SHIFT


def sample_checkerboard(key: Array, n: int) -> Array:
    """FFJORD's checkerboard: uniform on 8 squares of side 2 in ``[-4, 4]^2``. Returns ``[n, 2]``."""
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), jnp.float32, -2.0, 2.0)
    x2 = jax.random.uniform(k2, (n,), jnp.float32) - 2.0 * jax.random.bernoulli(k3, 0.5, (n,))
    x2 = x2 + jnp.mod(jnp.floor(x1), 2.0)
    return CHECKERBOARD_SCALE * jnp.stack([x1, x2], axis=-1)


def sample_spirals(key: Array, n: int) -> Array:
    """FFJORD's 2 spirals (``'2spirals'``). Returns ``[n, 2]``."""
    k_r, k_ux, k_uy, k_arm, k_eps = jax.random.split(key, 5)
    r = jnp.sqrt(jax.random.uniform(k_r, (n,), jnp.float32)) * SPIRALS_MAX_ANGLE
    dx = -jnp.cos(r) * r + SPIRALS_UNIFORM_NOISE * jax.random.uniform(k_ux, (n,), jnp.float32)
    dy = jnp.sin(r) * r + SPIRALS_UNIFORM_NOISE * jax.random.uniform(k_uy, (n,), jnp.float32)
    sign = jnp.where(jax.random.bernoulli(k_arm, 0.5, (n,)), -1.0, 1.0)
    d = sign[:, None] * jnp.stack([dx, dy], axis=-1) / SPIRALS_DIVISOR
    return d + SPIRALS_GAUSSIAN_STD * jax.random.normal(k_eps, (n, 2), jnp.float32)


def toy_gmm():
    """The analytic mixture behind the ``gmm`` toy (exact denoiser and density), float32."""
    from diffusion_jax import analytic

    return analytic.gmm_2d_ring(dtype=jnp.float32)


def sample_gmm(key: Array, n: int) -> Array:
    """Exact draws of the ``gmm`` toy (``toy_gmm()``). Returns ``[n, 2]`` float32."""
    return toy_gmm().sample(key, n).astype(jnp.float32)


TOY_SAMPLERS: dict[str, Callable[[Array, int], Array]] = {
    "gaussian": sample_gaussian,
    "8gaussians": sample_8gaussians,
    "moons": sample_moons,
    "checkerboard": sample_checkerboard,
    "spirals": sample_spirals,
    "gmm": sample_gmm,
}
"""Explicit name -> sampler table (no registration by import side effect)."""


def get_toy_sampler(name: str) -> Callable[[Array, int], Array]:
    """Looks up a sampler ``fn(key, n) -> [n, 2]``; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return TOY_SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown toy2d dataset {name!r}; valid names: {sorted(TOY_SAMPLERS)}") from None


def sample_toy(name: str, key: Array, n: int) -> Array:
    """Draws ``n`` i.i.d. points of toy distribution ``name`` (see module docstring).

    Args:
      name: one of ``TOY_SAMPLERS`` (static; validated before any tracing).
      key: a JAX PRNG key.
      n: number of points (static).

    Returns:
      ``[n, 2]`` float32.
    """
    return get_toy_sampler(name)(key, n)


def sample_pair(source: str, target: str, key: Array, n: int) -> tuple[Array, Array]:
    """Independent pairs ``(x0 ~ source, x1 ~ target)``, e.g. torchcfm's ``8gaussians -> moons``.

    Returns:
      ``(x0 [n, 2], x1 [n, 2])`` float32, drawn from two independent sub-keys.
    """
    src, tgt = get_toy_sampler(source), get_toy_sampler(target)
    k0, k1 = jax.random.split(key)
    return src(k0, n), tgt(k1, n)
