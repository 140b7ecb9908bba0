"""Training-time distributions p(t), each with its exact density.

With the weightings of `weightings`, p(t) changes only the variance of the loss estimate
(importance sampling; Kingma & Gao 2023, sec. 2-3), except for the "plain MSE" weightings whose
implied w(lambda) contains p. Every sample is clipped to [t_eps, 1 - t_eps] (the schedules are
singular at an endpoint: lambda = +-inf); the densities are those of the unclipped laws, except that
the uniform family is drawn on, and renormalised to, the clipped interval:

  * ``uniform``       t ~ U(t_eps, 1 - t_eps).
  * ``antithetic``    low-discrepancy: t_i = (u + i/B) mod 1 (Kingma et al. 2021, VDM, low-discrepancy
                      sampler of the appendix); each t_i is marginally uniform.
  * ``stratified``    t_i = (i + u_i)/B, one draw per stratum; marginally uniform.
  * ``logit_normal``  t = sigmoid(m + s n), n ~ N(0, 1) (Esser et al. 2024, SD3 eq. 19); kwargs m, s.
  * ``lognormal_sigma`` ln(sigma_t/alpha_t) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1 training),
                      mapped to t by the schedule's inverse logSNR; kwargs P_mean=-1.2, P_std=1.2.
  * ``logsnr_uniform`` lambda ~ U(lambda_min, lambda_max), mapped to t likewise; kwargs -10, 10. Where a
                      schedule cannot reach part of that range the clipped samples sit at the end of
                      the t interval (inside the support), so importance weights stay finite.

**Adding one** (outside the package): a `TimeDistribution(sample, log_density, defaults)` passed to
`register_time_distribution`, or named as ``'module:Attribute'``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax import extensions

Array = jax.Array
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class TimeDistribution(NamedTuple):
    """sample(key, n, schedule, dtype, **kw) -> t [n] (unclipped); log_density(t, schedule, **kw) ->
    log p(t) [n]; defaults: the kwargs (``objective.time_kwargs``) and their default values;
    on_unit_interval: samples are uniform-like on [0, 1] and are mapped affinely onto
    [t_eps, 1 - t_eps] (density renormalised) instead of being clipped; check(kw) raises ValueError
    on invalid kwargs (optional)."""

    sample: Callable
    log_density: Callable
    defaults: dict
    on_unit_interval: bool = False
    check: Callable[[dict], None] | None = None


def _uniform_sample(key, n, schedule, dtype):
    return jax.random.uniform(key, (n,), dtype)


def _uniform_logp(t, schedule):
    return jnp.zeros_like(t)


def _antithetic_sample(key, n, schedule, dtype):
    u0 = jax.random.uniform(key, (), dtype)
    return jnp.mod(u0 + jnp.arange(n, dtype=dtype) / n, 1.0)


def _stratified_sample(key, n, schedule, dtype):
    return (jnp.arange(n, dtype=dtype) + jax.random.uniform(key, (n,), dtype)) / n


def _logit_normal_sample(key, n, schedule, dtype, m, s):
    return jax.nn.sigmoid(m + s * jax.random.normal(key, (n,), dtype))


def _logit_normal_logp(t, schedule, m, s):
    logit = jnp.log(t) - jnp.log1p(-t)
    return -0.5 * ((logit - m) / s) ** 2 - math.log(s) - _LOG_SQRT_2PI - jnp.log(t) - jnp.log1p(-t)


def _lognormal_sigma_sample(key, n, schedule, dtype, P_mean, P_std):  # noqa: N803
    log_sigma = P_mean + P_std * jax.random.normal(key, (n,), dtype)
    return schedule.t_from_logsnr(-2.0 * log_sigma)


def _lognormal_sigma_logp(t, schedule, P_mean, P_std):  # noqa: N803
    # ln sigma~ = -lambda/2  =>  p(t) = N(-lambda/2; P_mean, P_std) |d lambda/dt| / 2
    log_sigma = -0.5 * schedule.logsnr(t)
    return (
        -0.5 * ((log_sigma - P_mean) / P_std) ** 2
        - math.log(P_std)
        - _LOG_SQRT_2PI
        + jnp.log(0.5 * jnp.abs(schedule.d_logsnr(t)))
    )


def _logsnr_uniform_sample(key, n, schedule, dtype, lambda_min, lambda_max):
    lam = jax.random.uniform(key, (n,), dtype, lambda_min, lambda_max)
    return schedule.t_from_logsnr(lam)


def _logsnr_uniform_logp(t, schedule, lambda_min, lambda_max):
    lam = schedule.logsnr(t)
    inside = (lam >= lambda_min) & (lam <= lambda_max)
    logp = jnp.log(jnp.abs(schedule.d_logsnr(t))) - math.log(lambda_max - lambda_min)
    return jnp.where(inside, logp, -jnp.inf)


def _positive(field):
    def check(kw):
        if not kw[field] > 0:
            raise ValueError(f"objective.time_kwargs.{field} must be > 0, got {kw[field]}")

    return check


def _check_lambda_range(kw):
    if not kw["lambda_max"] > kw["lambda_min"]:
        raise ValueError("objective.time_kwargs: lambda_max must exceed lambda_min")


TIME_DISTRIBUTIONS: dict[str, TimeDistribution] = {
    "uniform": TimeDistribution(_uniform_sample, _uniform_logp, {}, True),
    "antithetic": TimeDistribution(_antithetic_sample, _uniform_logp, {}, True),
    "stratified": TimeDistribution(_stratified_sample, _uniform_logp, {}, True),
    "logit_normal": TimeDistribution(
        _logit_normal_sample, _logit_normal_logp, {"m": 0.0, "s": 1.0}, check=_positive("s")
    ),
    "lognormal_sigma": TimeDistribution(
        _lognormal_sigma_sample,
        _lognormal_sigma_logp,
        {"P_mean": -1.2, "P_std": 1.2},
        check=_positive("P_std"),
    ),
    "logsnr_uniform": TimeDistribution(
        _logsnr_uniform_sample,
        _logsnr_uniform_logp,
        {"lambda_min": -10.0, "lambda_max": 10.0},
        check=_check_lambda_range,
    ),
}
"""The built-in time distributions; `register_time_distribution` adds to this table."""


def register_time_distribution(
    name: str, dist: TimeDistribution, *, overwrite: bool = False
) -> TimeDistribution:
    """Make `dist` available as ``objective.time_distribution=name`` (an explicit call; `extensions`)."""
    return extensions.register(
        TIME_DISTRIBUTIONS, "time distribution", name, dist, overwrite=overwrite, expect=TimeDistribution
    )


def get_time_distribution(name: str) -> TimeDistribution:
    """The time distribution `name` (or ``'module:Attribute'``); ValueError listing the valid names."""
    return extensions.lookup(TIME_DISTRIBUTIONS, "time distribution", name, expect=TimeDistribution)


def sample(dist: TimeDistribution, kw: dict, key: Array, n: int, schedule, t_eps: float, dtype=jnp.float32):
    """Times t [n] from `dist` with kwargs `kw`, in [t_eps, 1 - t_eps] (module docstring)."""
    t = dist.sample(key, n, schedule, dtype, **kw)
    if dist.on_unit_interval:
        t = t_eps + (1.0 - 2.0 * t_eps) * t
    return jnp.clip(t, t_eps, 1.0 - t_eps).astype(dtype)


def log_density(dist: TimeDistribution, kw: dict, t: Array, schedule, t_eps: float) -> Array:
    """log p(t) [n] of `dist` (a unit-interval law renormalised to [t_eps, 1 - t_eps])."""
    logp = dist.log_density(t, schedule, **kw)
    if dist.on_unit_interval:
        logp = logp - math.log(1.0 - 2.0 * t_eps)
    return logp


__all__ = [
    "TIME_DISTRIBUTIONS",
    "TimeDistribution",
    "get_time_distribution",
    "log_density",
    "register_time_distribution",
    "sample",
]
