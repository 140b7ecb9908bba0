"""Interpolants x_t = a(t) x1 + b(t) x0 + c(t) eps between data and any source, and their sources.

Time convention (as in `schedules`): data x1 sits at t = 0, the source x0 at t = 1; eps ~ N(0, I)
is independent of (x0, x1), which come from a coupling. A sampler integrates from t = 1 to t = 0.

The coefficients (a, b) are those of a `schedules.Schedule`: a = alpha(t), b = sigma(t). The path
noise c(t) is one of `PATH_NOISES`:

  * ``none``      c = 0. With a standard normal source this *is* the schedule's Gaussian path
                  z_t = alpha x + sigma eps (the source draw plays the role of eps), computed with the
                  identical floating-point operations, so losses and samples are bitwise those of the
                  Gaussian path.
  * ``constant``  c = sigma_path: the CFM path of Tong et al. 2024 ("Improving and generalizing
                  flow-based generative models with minibatch optimal transport", TMLR; eq. 14 for
                  I-CFM, eq. 18 for OT-CFM): x_t' = t' x1 + (1 - t') x0 + sigma eps with t' = 1 - t.
  * ``bridge``    c = sigma_path sqrt(t (1 - t)): the Brownian bridge between x0 and x1 with diffusion
                  sigma_path (SB-CFM, Tong et al. 2024b, "Simulation-free Schrodinger bridges via
                  score and flow matching", AISTATS, eq. 10), and the stochastic interpolants of
                  Albergo & Vanden-Eijnden 2023 ("Stochastic interpolants: a unifying framework",
                  eq. 2.1 with gamma(t) = sqrt(a t (1 - t)), i.e. sigma_path = sqrt(a)).

Conditional targets (given x0, x1, eps):
  * velocity  u = dx_t/dt = a' x1 + b' x0 + c' eps. (Tong et al.'s u_t' = -u: their time runs the
    other way.) For the bridge, c' eps = (1 - 2t) / (2 t (1 - t)) (x_t - a x1 - b x0): SB-CFM eq. 11.
  * score     grad log p_t(x | x0, x1) = -eps / c, defined where c > 0 (SB-CFM eq. 12).

Sampling from the marginals (Albergo & Vanden-Eijnden 2023, Thm. 2.21 / eq. 2.33): for any
diffusion coefficient eps(t) >= 0 the reverse-time SDE, stepped from t to t - h,

    X_{t-h} = X_t - h (v(t, X) - eps(t) s(t, X)) + sqrt(2 eps(t) h) xi,

has the marginals of x_t (v the marginal velocity, s the marginal score); eps = 0 is the ODE, and
SB-CFM's SDE is eps = sigma_path^2 / 2 (`sde_drift`).

A `Source` is the distribution at t = 1: it draws samples (one per key, so a seed fixes its draw as
it fixes its noise) and may provide a log-density (likelihood needs one and refuses a source
without). Sources here are built from callables; the data layer wraps its toy samplers, `analytic`
distributions fit `from_distribution`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax.schedules import Schedule, _as_float

Array = jax.Array
PATH_NOISES = ("none", "constant", "bridge")
_LOG_2PI = math.log(2.0 * math.pi)


class InterpCoeffs(NamedTuple):
    """a(t), b(t), c(t) and their time derivatives, each with the shape of t."""

    a: Array
    b: Array
    c: Array
    da: Array
    db: Array
    dc: Array


def _bcast(c: Array, x: Array) -> Array:
    """Per-sample coefficient c (() or [B]) broadcast against x [B, ...]."""
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    if c.ndim != 1 or x.ndim == 0 or c.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"time shape {tuple(c.shape)} does not fit samples of shape {tuple(x.shape)}")
    return c.reshape(c.shape + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class Interpolant:
    """x_t = a(t) x1 + b(t) x0 + c(t) eps with (a, b) = (alpha, sigma) of `schedule`.

    Hashable (a static jit argument). `noise` in `PATH_NOISES`, `sigma` >= 0 its scale (ignored for
    'none'). All methods are elementwise in t (() or [B]) and follow x's dtype; x1, x0, eps [B, ...].
    """

    schedule: Schedule
    noise: str = "none"
    sigma: float = 0.0

    def __post_init__(self):
        if self.noise not in PATH_NOISES:
            raise ValueError(f"interpolant noise={self.noise!r} unknown; valid: {list(PATH_NOISES)}")
        s = float(self.sigma)
        if not (math.isfinite(s) and s >= 0.0):
            raise ValueError(f"interpolant sigma must be a finite number >= 0, got {self.sigma}")
        if self.noise == "none" and s != 0.0:
            raise ValueError(f"interpolant sigma={s} needs noise='constant' or 'bridge' (got noise='none')")

    @property
    def stochastic(self) -> bool:
        """True when c is not identically zero (the path carries its own noise eps)."""
        return self.noise != "none" and float(self.sigma) > 0.0

    # --- coefficients ---------------------------------------------------------------------------
    def c(self, t) -> Array:
        t = _as_float(t)
        if not self.stochastic:
            return jnp.zeros_like(t)
        if self.noise == "constant":
            return jnp.full_like(t, self.sigma)
        return self.sigma * jnp.sqrt(t * (1.0 - t))

    def d_c(self, t) -> Array:
        """c'(t); the bridge's is sigma (1 - 2t) / (2 sqrt(t (1 - t))) (infinite at t = 0, 1)."""
        t = _as_float(t)
        if self.noise != "bridge" or not self.stochastic:
            return jnp.zeros_like(t)
        return self.sigma * (1.0 - 2.0 * t) / (2.0 * jnp.sqrt(t * (1.0 - t)))

    def __call__(self, t) -> InterpCoeffs:
        t = _as_float(t)
        co = self.schedule(t)
        return InterpCoeffs(co.alpha, co.sigma, self.c(t), co.d_alpha, co.d_sigma, self.d_c(t))

    # --- the path and its conditional targets -----------------------------------------------------
    def interpolate(self, x1: Array, x0: Array, eps: Array | None, t) -> Array:
        """x_t [B, ...]. With c = 0 this is `alpha * x1 + sigma * x0`, the Gaussian path's operations."""
        a, b = _bcast(self.schedule.alpha(t), x1), _bcast(self.schedule.sigma(t), x1)
        z = a * x1 + b * x0
        if self.stochastic:
            z = z + _bcast(self.c(t), x1) * eps
        return z

    def velocity(self, x1: Array, x0: Array, eps: Array | None, t) -> Array:
        """Conditional velocity dx_t/dt = a' x1 + b' x0 + c' eps [B, ...] (the flow-matching target)."""
        da, ds = _bcast(self.schedule.d_alpha(t), x1), _bcast(self.schedule.d_sigma(t), x1)
        u = da * x1 + ds * x0
        if self.stochastic:
            u = u + _bcast(self.d_c(t), x1) * eps
        return u

    def score(self, eps: Array, t) -> Array:
        """Conditional score grad_x log N(x; a x1 + b x0, c^2 I) = -eps / c [B, ...] (needs c > 0)."""
        if not self.stochastic:
            raise ValueError("the conditional score needs path noise (noise='constant'/'bridge', sigma > 0)")
        return -eps / _bcast(self.c(t), eps)

    def sde_drift(self, velocity: Array, score: Array, t, diffusion: float | Array) -> Array:
        """Drift of the reverse-time SDE in t (module docstring): v - eps(t) s; the step from t to
        t - h is X - h drift + sqrt(2 eps(t) h) xi. `diffusion` is eps(t) >= 0 (() or [B])."""
        return velocity - _bcast(jnp.asarray(diffusion), velocity) * score


def sb_diffusion(sigma: float) -> float:
    """SB-CFM's diffusion coefficient eps(t) = g^2 / 2 with g = sigma (Tong et al. 2024b, eq. 8)."""
    return 0.5 * float(sigma) ** 2


def sb_entropic_reg(sigma: float) -> float:
    """The entropic-OT regularisation of the static Schrodinger bridge with diffusion sigma:
    2 sigma^2 for the squared Euclidean cost (Tong et al. 2024b, Prop. 3.1 / eq. 9)."""
    return 2.0 * float(sigma) ** 2


# -------------------------------------------------------------------------------------------------
# Sources
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """The distribution at t = 1.

    sample_fn: `(key, shape, dtype) -> x0 [*shape]` with shape = (n, *event), or None (a source
      that cannot be sampled: building one raises, see `check_source`).
    log_prob_fn: `x [n, *event] -> log p(x) [n]`, or None.
    gaussian: True for the standard normal (the Gaussian path's source).
    event_shape: the per-sample shape the source produces, or None for "any" (Gaussian).
    Hashable by identity (a static jit argument).
    """

    name: str
    sample_fn: Callable | None
    log_prob_fn: Callable | None = None
    gaussian: bool = False
    event_shape: tuple | None = None

    def __post_init__(self):
        check_source(self)

    @property
    def has_density(self) -> bool:
        return self.log_prob_fn is not None

    def sample(self, key: Array, shape: tuple, dtype=jnp.float32) -> Array:
        """n independent draws [*shape], shape = (n, *event)."""
        self._check_event(shape[1:])
        return self.sample_fn(key, tuple(shape), dtype)

    def draw(self, key: Array, event_shape: tuple, schedule=None, t0=None, dtype=jnp.float32) -> Array:
        """One draw [*event_shape] from one (per-sample) key: seed i's source point depends only on
        its key, never on the batch it is drawn in (vmap it over the per-sample keys).

        The signature is the sampling engine's source hook (`samplers.seeds.initial_state`): the
        state at grid time t0 under `schedule`. The Gaussian source gives sigma(t0) * N(0, I) (the
        engine's default draw, bit for bit; plain N(0, I) without a schedule); any other source sits
        at t = 1 only, so a concrete t0 != 1 raises ValueError.
        """
        event_shape = tuple(event_shape)
        if self.gaussian:
            eps = self.sample_fn(key, event_shape, dtype)
            if schedule is None:
                return eps
            return schedule.sigma(jnp.asarray(t0, dtype)).astype(dtype) * eps
        if t0 is not None:
            try:
                t0c = float(t0)
            except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
                t0c = None
            if t0c is not None and t0c != 1.0:
                raise ValueError(
                    f"source {self.name!r} is the distribution at t = 1; sampling must start there "
                    f"(grid t_max = 1), got t0 = {t0c}"
                )
        return self.sample(key, (1, *event_shape), dtype)[0]

    def log_prob(self, x: Array) -> Array:
        """log p(x) [n] for x [n, *event]; raises ValueError when the source has no density."""
        if self.log_prob_fn is None:
            raise ValueError(
                f"source {self.name!r} has no log-density; likelihood needs one (gaussian, an "
                "analytic distribution, or a sampler source built with log_prob=...)"
            )
        return self.log_prob_fn(x)

    def _check_event(self, event):
        if self.event_shape is not None and tuple(event) != tuple(self.event_shape):
            raise ValueError(
                f"source {self.name!r} draws samples of shape {tuple(self.event_shape)}, asked for {tuple(event)}"
            )


def check_source(source) -> None:
    """Raise ValueError (one line) if `source` cannot be sampled."""
    fn = getattr(source, "sample_fn", None)
    if fn is None or not callable(fn):
        raise ValueError(f"source {getattr(source, 'name', source)!r} has no sampler (sample_fn is None)")


def _std_normal_logp(x):
    d = math.prod(x.shape[1:])
    sq = jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1)
    return -0.5 * sq - 0.5 * d * _LOG_2PI


def gaussian_source() -> Source:
    """N(0, I) of any shape: the Gaussian paths' source (a draw is `jax.random.normal`)."""
    return Source(
        "gaussian", lambda key, shape, dtype: jax.random.normal(key, shape, dtype), _std_normal_logp, True
    )


def sampler_source(
    name: str, sample_n: Callable, log_prob: Callable | None = None, event_shape: tuple | None = None
) -> Source:
    """A source from a user sampler `sample_n(key, n) -> [n, *event]` (e.g. a `data.toy2d`
    sampler) and an optional log-density `log_prob(x [n, *event]) -> [n]`."""
    if sample_n is None or not callable(sample_n):
        raise ValueError(
            f"source {name!r}: the sampler must be a callable (key, n) -> [n, ...], got {sample_n!r}"
        )

    def sample_fn(key, shape, dtype):
        return jnp.asarray(sample_n(key, shape[0]), dtype)

    return Source(name, sample_fn, log_prob, False, None if event_shape is None else tuple(event_shape))


def from_distribution(name: str, dist) -> Source:
    """A source from a distribution object with `sample(key, n) -> [n, D]` and, if it has one,
    `log_prob(x [n, D]) -> [n]` (e.g. `analytic.Gaussian`, `analytic.GaussianMixture`)."""
    sample = getattr(dist, "sample", None)
    if sample is None:
        raise ValueError(f"source {name!r}: {type(dist).__name__} has no sample(key, n) method")
    log_prob = getattr(dist, "log_prob", None)
    dim = getattr(dist, "dim", None)
    return sampler_source(name, sample, log_prob, None if dim is None else (int(dim),))


__all__ = [
    "PATH_NOISES",
    "InterpCoeffs",
    "Interpolant",
    "Source",
    "check_source",
    "from_distribution",
    "gaussian_source",
    "sampler_source",
    "sb_diffusion",
    "sb_entropic_reg",
]
