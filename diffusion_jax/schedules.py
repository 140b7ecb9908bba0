"""Noise schedules: the Gaussian paths z_t = alpha(t) x + sigma(t) eps, data at t=0, noise at t=1.

Every diffusion and flow-matching formulation in this package is one of these paths (Kingma et al.
2021, "Variational Diffusion Models"; Lipman et al. 2023, "Flow Matching"; Kingma & Gao 2023,
"Understanding Diffusion Objectives"). A schedule is a small frozen dataclass: hashable, so it is a
static argument under `jax.jit`, and it never holds arrays.

Each schedule gives
  * `alpha(t)`, `sigma(t)` and their time derivatives `d_alpha(t)`, `d_sigma(t)` (closed form where
    known, `jax.jvp` otherwise);
  * `logsnr(t) = log(alpha^2 / sigma^2)` (called lambda in the papers) and its inverse
    `t_from_logsnr(lam)`; every schedule here has logSNR strictly decreasing in t;
  * `t_min`, `t_max`: the default interval a sampler integrates over (e.g. VP stops at 1e-3 as in
    score_sde, EDM at sigma_min / sigma_max).

All functions are elementwise over `t` of any shape and follow its dtype (use float64 for accuracy
tests).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import extensions
from diffusion_jax.schedule_base import PathCoeffs, Schedule, _as_float  # noqa: F401  (re-exported)

Array = jax.Array


# -------------------------------------------------------------------------------------------------
# Variance preserving (alpha^2 + sigma^2 = 1)
# -------------------------------------------------------------------------------------------------


class _VPMixin:
    """alpha^2 + sigma^2 = 1: everything follows from log alpha(t)."""

    def log_alpha(self, t) -> Array:
        raise NotImplementedError

    def d_log_alpha(self, t) -> Array:
        t = _as_float(t)
        return jax.jvp(self.log_alpha, (t,), (jnp.ones_like(t),))[1]

    def alpha(self, t):
        return jnp.exp(self.log_alpha(_as_float(t)))

    def sigma(self, t):
        # sqrt(1 - alpha^2) without cancellation near t=0.
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(_as_float(t))))

    def d_alpha(self, t):
        t = _as_float(t)
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t):
        # sigma sigma' = -alpha alpha' = -alpha^2 (log alpha)'
        t = _as_float(t)
        a2 = jnp.exp(2.0 * self.log_alpha(t))
        return -a2 * self.d_log_alpha(t) / self.sigma(t)

    def logsnr(self, t):
        # lambda = log(a^2 / (1 - a^2)) = -log(expm1(-2 log a))
        return -jnp.log(jnp.expm1(-2.0 * self.log_alpha(_as_float(t))))

    def _log_alpha_from_logsnr(self, lam):
        # alpha^2 = sigmoid(lam)  =>  log alpha = -0.5 * log1p(exp(-lam))
        return -0.5 * jax.nn.softplus(-_as_float(lam))


@dataclasses.dataclass(frozen=True)
class VPLinear(_VPMixin, Schedule):
    """Continuous VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min)
    (Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 11 and 33):
    log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3

    def log_alpha(self, t):
        t = _as_float(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def d_log_alpha(self, t):
        t = _as_float(t)
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def t_from_logsnr(self, lam):
        # -2 log alpha = c  =>  (db/2) t^2 + beta_min t - c = 0, positive root.
        c = -2.0 * self._log_alpha_from_logsnr(lam)
        db = self.beta_max - self.beta_min
        if db == 0:
            return c / self.beta_min
        return (jnp.sqrt(self.beta_min**2 + 2.0 * db * c) - self.beta_min) / db


@dataclasses.dataclass(frozen=True)
class VPDiscrete(_VPMixin, Schedule):
    """DDPM's discrete schedule (Ho et al. 2020, sec. 4): N steps of linear betas in
    [beta_start, beta_end], alpha_bar_n = prod_{i<=n} (1 - beta_i).

    Embedded in continuous time at t_n = n / N (n = 1..N, alpha_bar_0 = 1) with log alpha_bar
    piecewise linear in t between those points, so a 1000-step model is exact on its own grid and
    any continuous-time sampler can still query it between grid points. The network's time input is
    the step index n - 1 = N t - 1 (the `ddpm_index` time transform in `predictions`).
    """

    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    t_min: float = 1e-3

    def _grid(self, dtype):
        betas = np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)
        log_abar = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
        ts = np.arange(self.num_steps + 1, dtype=np.float64) / self.num_steps
        return jnp.asarray(ts, dtype), jnp.asarray(log_abar, dtype)

    def alphas_cumprod(self) -> np.ndarray:
        """alpha_bar_n for n = 1..N (float64 numpy), as in the DDPM reference code."""
        betas = np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)
        return np.cumprod(1.0 - betas)

    def log_alpha(self, t):
        # Linear interpolation on the uniform grid t_n = n / N (clamped to [0, 1], as np.interp):
        # the interval index is floor(N t), so no search (jnp.interp's binary search is a 10-step
        # loop, which op by op under disable_jit costs ~80 ms per call).
        t = _as_float(t)
        _, log_abar = self._grid(t.dtype)
        u = jnp.clip(t, 0.0, 1.0) * self.num_steps
        idx = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, self.num_steps - 1)
        lo, hi = log_abar[idx], log_abar[idx + 1]
        return 0.5 * (lo + (u - idx.astype(u.dtype)) * (hi - lo))

    def d_log_alpha(self, t):
        t = _as_float(t)
        ts, log_abar = self._grid(t.dtype)
        slopes = jnp.diff(log_abar) * self.num_steps
        idx = jnp.clip(jnp.floor(t * self.num_steps).astype(jnp.int32), 0, self.num_steps - 1)
        return 0.5 * slopes[idx]

    def t_from_logsnr(self, lam):
        lam = _as_float(lam)
        ts, log_abar = self._grid(lam.dtype)
        target = 2.0 * self._log_alpha_from_logsnr(lam)  # log alpha_bar, decreasing in t
        # np.interp(-target, -log_abar, ts) with the interval found by one comparison against all
        # N + 1 knots (a single op, not a search loop).
        x, xp = -target, -log_abar
        idx = jnp.sum(x[..., None] >= xp, axis=-1) - 1
        idx = jnp.clip(idx, 0, self.num_steps - 1)
        x0, x1 = xp[idx], xp[idx + 1]
        w = jnp.clip((x - x0) / (x1 - x0), 0.0, 1.0)
        return ts[idx] + w * (ts[idx + 1] - ts[idx])


@dataclasses.dataclass(frozen=True)
class VPCosine(_VPMixin, Schedule):
    """Cosine schedule (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17):
    alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) * pi / 2).

    alpha(1) = 0 exactly (logSNR = -inf), where eps- and v-predictions cannot be turned into x0; the
    default `t_max` therefore stops at 0.999 (logSNR about -12.9).
    """

    s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 0.999

    def _theta(self, t):
        return (t + self.s) / (1.0 + self.s) * (math.pi / 2)

    def log_alpha(self, t):
        t = _as_float(t)
        return jnp.log(jnp.cos(self._theta(t))) - math.log(math.cos(self._theta(0.0)))

    def d_log_alpha(self, t):
        t = _as_float(t)
        return -jnp.tan(self._theta(t)) * (math.pi / 2) / (1.0 + self.s)

    def t_from_logsnr(self, lam):
        # cos(theta) = cos(theta_0) * alpha, alpha = sqrt(sigmoid(lam))
        alpha = jnp.exp(self._log_alpha_from_logsnr(lam))
        theta = jnp.arccos(math.cos(self._theta(0.0)) * alpha)
        return theta * (1.0 + self.s) / (math.pi / 2) - self.s


# -------------------------------------------------------------------------------------------------
# Variance exploding (alpha = 1)
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VE(Schedule):
    """VE SDE (Song et al. 2021, eq. 9 and 30): alpha = 1, sigma(t) = sigma_min (sigma_max /
    sigma_min)^t, geometric. sigma(0) = sigma_min > 0, so t=0 is data up to that small noise."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 0.0

    @property
    def _log_ratio(self):
        return math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t):
        return jnp.ones_like(_as_float(t))

    def sigma(self, t):
        return self.sigma_min * jnp.exp(_as_float(t) * self._log_ratio)

    def d_alpha(self, t):
        return jnp.zeros_like(_as_float(t))

    def d_sigma(self, t):
        return self.sigma(t) * self._log_ratio

    def logsnr(self, t):
        return -2.0 * (math.log(self.sigma_min) + _as_float(t) * self._log_ratio)

    def t_from_logsnr(self, lam):
        return (-0.5 * _as_float(lam) - math.log(self.sigma_min)) / self._log_ratio


@dataclasses.dataclass(frozen=True)
class EDM(Schedule):
    """EDM's path (Karras et al. 2022, "Elucidating the Design Space", Table 1): alpha = 1 and
    sigma = t, with t rescaled to [0, 1]: sigma(t) = sigma_max * t. The sampling range
    [sigma_min, sigma_max] becomes t in [sigma_min / sigma_max, 1]. `sigma_data` is the data standard
    deviation used by EDM's preconditioning and loss weighting.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    t_min: float = dataclasses.field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.t_min is None:
            object.__setattr__(self, "t_min", self.sigma_min / self.sigma_max)

    def alpha(self, t):
        return jnp.ones_like(_as_float(t))

    def sigma(self, t):
        return self.sigma_max * _as_float(t)

    def d_alpha(self, t):
        return jnp.zeros_like(_as_float(t))

    def d_sigma(self, t):
        return jnp.full_like(_as_float(t), self.sigma_max)

    def logsnr(self, t):
        return -2.0 * jnp.log(self.sigma_max * _as_float(t))

    def t_from_logsnr(self, lam):
        return jnp.exp(-0.5 * _as_float(lam)) / self.sigma_max


# -------------------------------------------------------------------------------------------------
# Flow matching paths
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Linear interpolation / CondOT path (Liu et al. 2023, "Flow Straight and Fast"; Lipman et al.
    2023, eq. 20 with sigma_min = 0): alpha = 1 - t, sigma = t. Velocity target: eps - x."""

    t_min: float = 0.0

    def alpha(self, t):
        return 1.0 - _as_float(t)

    def sigma(self, t):
        return _as_float(t)

    def d_alpha(self, t):
        return -jnp.ones_like(_as_float(t))

    def d_sigma(self, t):
        return jnp.ones_like(_as_float(t))

    def logsnr(self, t):
        t = _as_float(t)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_logsnr(self, lam):
        return jax.nn.sigmoid(-0.5 * _as_float(lam))


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
    """Polynomial convex path (cf. Lipman et al. 2024, "Flow Matching Guide and Code", sec. 5.1):
    sigma = t^p, alpha = 1 - t^p. p = 1 is `RectifiedFlow`."""

    power: float = 2.0
    t_min: float = 0.0

    def sigma(self, t):
        return _as_float(t) ** self.power

    def alpha(self, t):
        return 1.0 - self.sigma(t)

    def d_sigma(self, t):
        t = _as_float(t)
        return self.power * t ** (self.power - 1.0)

    def d_alpha(self, t):
        return -self.d_sigma(t)

    def logsnr(self, t):
        s = self.sigma(t)
        return 2.0 * (jnp.log1p(-s) - jnp.log(s))

    def t_from_logsnr(self, lam):
        return jax.nn.sigmoid(-0.5 * _as_float(lam)) ** (1.0 / self.power)


# -------------------------------------------------------------------------------------------------
# Resolution shift (any schedule)
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shifted(Schedule):
    """SD3's resolution-dependent timestep shift (Esser et al. 2024, "Scaling Rectified Flow
    Transformers", eq. 23) applied to any base schedule as a time warp:
        u(t) = shift * t / (1 + (shift - 1) t),  alpha_shifted(t) = alpha_base(u(t)).
    For the linear path this lowers the logSNR by exactly 2 log(shift) at every t. shift > 1 moves
    time towards noise (larger images); shift = sqrt(m / n) in the paper.
    """

    base: Schedule = dataclasses.field(default_factory=RectifiedFlow)
    shift: float = 3.0
    t_min: float = dataclasses.field(default=None)  # type: ignore[assignment]
    t_max: float = dataclasses.field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.shift <= 0:
            raise ValueError(f"Shifted: `shift` must be > 0, got {self.shift}")
        if self.t_min is None:
            object.__setattr__(self, "t_min", float(self.unwarp(self.base.t_min)))
        if self.t_max is None:
            object.__setattr__(self, "t_max", float(self.unwarp(self.base.t_max)))

    @property
    def name(self) -> str:
        return f"Shifted({self.base.name}, {self.shift})"

    def warp(self, t):
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def d_warp(self, t):
        return self.shift / (1.0 + (self.shift - 1.0) * t) ** 2

    def unwarp(self, u):
        return u / (self.shift - (self.shift - 1.0) * u)

    def alpha(self, t):
        return self.base.alpha(self.warp(_as_float(t)))

    def sigma(self, t):
        return self.base.sigma(self.warp(_as_float(t)))

    def d_alpha(self, t):
        t = _as_float(t)
        return self.base.d_alpha(self.warp(t)) * self.d_warp(t)

    def d_sigma(self, t):
        t = _as_float(t)
        return self.base.d_sigma(self.warp(t)) * self.d_warp(t)

    def logsnr(self, t):
        return self.base.logsnr(self.warp(_as_float(t)))

    def t_from_logsnr(self, lam):
        return self.unwarp(self.base.t_from_logsnr(lam))


# -------------------------------------------------------------------------------------------------
# Lookup by name (explicit dict: no registry filled by import side effects)
# -------------------------------------------------------------------------------------------------

SCHEDULES: dict[str, type[Schedule]] = {
    "vp_linear": VPLinear,
    "vp_discrete": VPDiscrete,
    "vp_cosine": VPCosine,
    "ve": VE,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
    "polynomial": Polynomial,
}
"""The built-in schedules; `register_schedule` adds to this table."""


def register_schedule(name: str, cls: type[Schedule], *, overwrite: bool = False) -> type[Schedule]:
    """Make the `Schedule` dataclass `cls` available as ``objective.schedule=name`` (an explicit call,
    e.g. at the top of the module a config lists in ``imports``; see `extensions`)."""
    if not (isinstance(cls, type) and issubclass(cls, Schedule) and dataclasses.is_dataclass(cls)):
        raise ValueError(
            f"register_schedule({name!r}): expected a dataclass subclass of Schedule, got {cls!r}"
        )
    return extensions.register(SCHEDULES, "schedule", name, cls, overwrite=overwrite)


def get_schedule(name: str, shift: float | None = None, **kwargs) -> Schedule:
    """Build a schedule by name, e.g. `get_schedule("vp_linear", beta_max=20.0)`; `name` may also be a
    ``'package.module:Class'`` reference.

    `shift` (SD3 resolution shift) wraps any schedule in `Shifted`; `shift=None` or 1 leaves it.
    Raises ValueError naming the valid schedules, or the valid fields of the chosen one.
    """
    cls = extensions.lookup(SCHEDULES, "schedule", name)
    if not (isinstance(cls, type) and issubclass(cls, Schedule)):
        raise ValueError(f"schedule {name!r} is {cls!r}, not a subclass of schedules.Schedule")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(
            f"schedule {name!r} got unknown field(s) {sorted(unknown)}; valid fields: {sorted(fields)}"
        )
    sched = cls(**kwargs)
    if shift is not None and shift != 1.0:
        sched = Shifted(base=sched, shift=float(shift))
    return sched
