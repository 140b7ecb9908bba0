"""Probability-flow ODE log-likelihood on a fixed time grid (Euler, Heun, DPM-Solver++ 2M).

The same quantity as `likelihood.log_likelihood` (Song et al. 2021, App. D.2, eq. 40):

    log p_{t_min}(x) = log p_{t_max}(z(t_max)) + int_{t_min}^{t_max} div v(z(t), t) dt,  z(t_min) = x,

with v = alpha' x0-hat + sigma' eps-hat the probability-flow velocity, but the augmented state
(z, delta = int div v dt) is integrated from the data (t_min) to the source (t_max) on a given
ascending grid t_min = t_0 < t_1 < ... < t_N = t_max with a fixed-step scheme, so that the NLL can be
put against the NFE of the same scheme used for sampling (issue 13, sec. 2). With h_n = t_{n+1} - t_n,
(v_n, div_n) = (v, div v)(z_n, t_n):

  * "euler": z_{n+1} = z_n + h_n v_n,  delta += h_n div_n.  Order 1. NFE N.
  * "heun" (explicit trapezoid, Heun 1900; Karras et al. 2022 Alg. 1 without its sigma = 0 case, which
    the encoding direction never meets): z~ = z_n + h_n v_n, then
    z_{n+1} = z_n + h_n (v_n + v(z~, t_{n+1})) / 2 and delta += h_n (div_n + div v(z~, t_{n+1})) / 2,
    i.e. the trapezoid rule on the divergence at the same two stages (RK2 on the augmented system).
    Order 2. NFE 2N.
  * "dpmpp_2m": DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++", Algorithm 2) for z. Its derivation
    (the variation-of-constants solution z_t = (sigma_t / sigma_s) z_s + sigma_t int_{lambda_s}^{lambda_t}
    e^lambda x0(lambda) dlambda, lambda = log(alpha / sigma), eq. 9 there, with x0 linear in lambda
    from the last two x0-hat's) holds for either sign of h = lambda_{n+1} - lambda_n, so it runs in
    the encoding direction (h < 0) unchanged. Written with the identity
    alpha' (e^{-h} - 1) = alpha_n sigma' / sigma_n - alpha' (primes: at t_{n+1}), the step is
        z_{n+1} = alpha' x0_n + sigma' eps_n - (alpha_n sigma' / sigma_n - alpha') (x0_n - x0_{n-1}) / (2 r_n),
        r_n = (lambda_n - lambda_{n-1}) / h,
    whose first two terms are the first-order (DDIM) step. That form stays finite at the ends of
    rectified-flow paths: the first step is first order (warm-up, as in Alg. 2) and needs eps-hat at
    t_0, not 1 / sigma_0, so it also starts at sigma(t_min) = 0 (velocity models); a step onto
    alpha(t_{n+1}) = 0 (lambda = -inf, h = -inf) is first order too, mirroring the sampler's first-order
    step onto sigma = 0 (one low-order step does not lower the global order).
    Divergence: only div_n at (z_n, t_n) is evaluated (one per step, like x0_n), so the integral uses
    the variable-step two-step Adams-Bashforth rule in t (the same linear extrapolation from the last
    two evaluations that 2M applies to x0, here in t):
        int_{t_n}^{t_{n+1}} div dt ~ h_n div_n + h_n^2 / (2 h_{n-1}) (div_n - div_{n-1}),
    local error O(h^3), with an Euler step first (one O(h^2) step). In t rather than lambda because
    div v is smooth in t up to t_min = 0 (e.g. VP: div v = f D - g^2/2 tr grad score), while
    lambda runs to +-inf at the ends of rectified-flow paths. Order 2. NFE N.
    Measured (tests/test_likelihood_fixed.py, N = 16..128): 2.17 on VP-linear's logSNR grid, 1.82 on
    rectified flow's uniform grid; on VP's uniform-t grid the range N < 1 / t_min is pre-asymptotic
    (1.4 here), as for the DPM-Solver++ 2M sampler itself (1.11 on uniform-t grids,
    experiments/results/solver_orders/orders.md).

One "function evaluation" (NFE) here is one network call together with its divergence: exact
(`divergence_method="exact"`, the trace of the per-sample Jacobian by one linearisation and D
forward-mode JVPs, for low dimension) or Hutchinson's estimator with `num_probes` Rademacher /
Gaussian probes drawn from an explicit key and fixed along the trajectory (as `likelihood`). The NFE
reported is the count of network calls per sample (Euler N, Heun 2N, DPM-Solver++ 2M N), checked by
counting calls in the tests.

Every sample uses the same grid, so a value never depends on the batch. The step loop is a
`fori_loop` over a grid padded to a bucket of >= 1024 steps, so every N up to the bucket reuses one
compiled program. Prior: as in `likelihood` (default log N(0, sigma(t_max)^2 I), or `prior_logp`, or a
`source`'s density).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.likelihood import (
    DIVERGENCES,
    LikelihoodOutput,
    draw_probes,
    prior_log_density,
    value_and_divergence,
)
from diffusion_jax.predictions import Denoiser
from diffusion_jax.samplers import grids

Array = jax.Array

FIXED_METHODS = ("euler", "heun", "dpmpp_2m")
_EVALS_PER_STEP = {"euler": 1, "heun": 2, "dpmpp_2m": 1}
_MIN_BUCKET = 1024


def fixed_step_nfe(method: str, num_steps: int) -> int:
    """Network calls (each with its divergence) per sample: Euler N, Heun 2N, DPM-Solver++ 2M N."""
    if method not in FIXED_METHODS:
        raise ValueError(f"fixed_step_nfe: unknown method {method!r}; valid: {list(FIXED_METHODS)}")
    return _EVALS_PER_STEP[method] * int(num_steps)


def _evaluator(den: Denoiser, probes: Array, hutch: bool):
    """(z [B, ...], t) -> (v, x0, eps [B, ...], div v [B]) from one network call per sample."""
    sch = den.schedule

    def one(zi, ei, t):
        _, _, da, ds = sch(t)

        def f(u):
            x0, eps = den.x0_eps(u[None], t)
            return da * x0[0] + ds * eps[0], (x0[0], eps[0])

        v, (x0, eps), div = value_and_divergence(f, zi, ei if hutch else None)
        return v, x0, eps, div

    def evaluate(z, t):
        return jax.vmap(one, in_axes=(0, 0, None))(z, probes, t)

    return evaluate


def _bcast(c, z):
    return jnp.reshape(c, (-1,) + (1,) * (z.ndim - 1)) if jnp.ndim(c) else c


def _step(method: str, ev, sch, times: Array, i, carry):
    """One step t_i -> t_{i+1} of `method`; carry = (z, delta, x0_prev, div_prev)."""
    z, delta, x0_prev, div_prev = carry
    t_c, t_n = times[i], times[i + 1]
    h = t_n - t_c
    v, x0, eps, div = ev(z, t_c)
    if method == "euler":
        return z + h * v, delta + h * div, x0, div
    if method == "heun":
        v1, _, _, div1 = ev(z + h * v, t_n)
        return z + 0.5 * h * (v + v1), delta + 0.5 * h * (div + div1), x0, div
    # DPM-Solver++ 2M for z (Lu et al. 2022b, Alg. 2; see the module docstring), AB2 in t for delta.
    t_p = times[jnp.maximum(i - 1, 0)]
    a_c, s_c, a_n, s_n = sch.alpha(t_c), sch.sigma(t_c), sch.alpha(t_n), sch.sigma(t_n)
    second = (i > 0) & (a_n > 0)
    lam_p, lam_c, lam_n = (0.5 * sch.logsnr(t) for t in (t_p, t_c, t_n))
    h_lam = jnp.where(second, lam_n - lam_c, -1.0)
    r = jnp.where(second, (lam_c - lam_p) / h_lam, 1.0)
    coef = jnp.where(second, a_c * s_n / jnp.where(second, s_c, 1.0) - a_n, 0.0)
    z_next = a_n * x0 + s_n * eps - coef * (x0 - x0_prev) / (2.0 * r)
    h_prev = jnp.where(i > 0, t_c - t_p, 1.0)
    ab2 = jnp.where(i > 0, h * h / (2.0 * h_prev) * (div - div_prev), 0.0)
    return z_next, delta + h * div + ab2, x0, div


@functools.partial(jax.jit, static_argnames=("method", "hutch"))
def _integrate(den: Denoiser, x: Array, times: Array, num_steps, probes: Array, method: str, hutch: bool):
    """(z(t_max) [B, ...], delta [B]) over times[: num_steps + 1] (times padded, ascending)."""
    ev = _evaluator(den, probes, hutch)
    sch = den.schedule
    carry = (x, jnp.zeros(x.shape[:1], x.dtype), jnp.zeros_like(x), jnp.zeros(x.shape[:1], x.dtype))
    z, delta, _, _ = jax.lax.fori_loop(0, num_steps, lambda i, c: _step(method, ev, sch, times, i, c), carry)
    return z, delta


def likelihood_grid(
    schedule, num_steps: int, grid: str = "uniform", *, t_min=None, t_max=None, **grid_kwargs
) -> np.ndarray:
    """The ascending [N+1] grid t_min -> t_max: `samplers.grids.make_grid(grid, N, ...)` reversed,
    i.e. the same times a sampler with this grid visits, in the encoding direction."""
    return np.asarray(
        grids.make_grid(grid, int(num_steps), schedule, t_min=t_min, t_max=t_max, **grid_kwargs), np.float64
    )[::-1]


def log_likelihood_fixed(
    denoiser: Denoiser,
    x: Array,
    *,
    method: str = "heun",
    num_steps: int | None = None,
    grid: str = "uniform",
    times=None,
    t_min: float | None = None,
    t_max: float | None = None,
    divergence_method: str = "exact",
    key: Array | None = None,
    num_probes: int = 1,
    prior_logp: Callable[[Array], Array] | None = None,
    source=None,
) -> LikelihoodOutput:
    """log p_{t_min}(x) [B] by the probability-flow ODE on a fixed grid (see the module docstring).

    Args:
      denoiser: any `Denoiser`. x: [B, ...] data points in the model's scale.
      method: "euler", "heun" or "dpmpp_2m".
      num_steps, grid, t_min, t_max: the grid `likelihood_grid(schedule, num_steps, grid, ...)` (the
        sampler's grid of that name, reversed; default endpoints the schedule's). Or
      times: an explicit ascending grid [N+1] from t_min (where x sits) to t_max (exclusive with the above).
      divergence_method: "exact", "rademacher" or "gaussian" (Hutchinson, `num_probes` probes per sample
        from `key`, fixed along the trajectory).
      prior_logp / source: the log-density at t_max (default log N(0, sigma(t_max)^2 I)).
    Returns: LikelihoodOutput(logp [B], nfe [B] (network calls per sample), z_end [B, ...],
      prior_logp [B], delta [B]). Raises ValueError on bad input, before compiling.
    """
    if method not in FIXED_METHODS:
        raise ValueError(f"log_likelihood_fixed: unknown method {method!r}; valid: {list(FIXED_METHODS)}")
    if divergence_method not in DIVERGENCES:
        raise ValueError(
            f"log_likelihood_fixed: unknown divergence_method {divergence_method!r}; valid: {list(DIVERGENCES)}"
        )
    hutch = divergence_method != "exact"
    if hutch and (key is None or num_probes < 1):
        raise ValueError(
            "log_likelihood_fixed: Hutchinson divergence needs an explicit `key` and num_probes >= 1"
        )
    if times is None:
        if num_steps is None or int(num_steps) < 1:
            raise ValueError(f"log_likelihood_fixed: num_steps must be an integer >= 1, got {num_steps!r}")
        ts = likelihood_grid(denoiser.schedule, num_steps, grid, t_min=t_min, t_max=t_max)
    else:
        if num_steps is not None or t_min is not None or t_max is not None:
            raise ValueError("log_likelihood_fixed: pass either `times` or num_steps / t_min / t_max")
        ts = np.asarray(times, np.float64)
        if ts.ndim != 1 or ts.size < 2 or not np.all(np.diff(ts) > 0) or ts[0] < 0:
            raise ValueError(
                f"log_likelihood_fixed: `times` must be an ascending [N+1] array in [0, 1], got {ts}"
            )
    prior = prior_log_density(denoiser, float(ts[-1]), prior_logp, source, caller="log_likelihood_fixed")
    x = jnp.asarray(x)
    n = ts.size - 1
    bucket = max(_MIN_BUCKET, 1 << (n - 1).bit_length())
    padded = jnp.asarray(np.concatenate([ts, np.full(bucket - n, ts[-1])]), x.dtype)
    shape = x.shape[1:]
    probes = (
        draw_probes(key, (x.shape[0], num_probes) + shape, divergence_method, x.dtype)
        if hutch
        else jnp.zeros((x.shape[0], 0) + shape, x.dtype)
    )
    z_end, delta = _integrate(denoiser, x, padded, jnp.asarray(n, jnp.int32), probes, method, hutch)
    lp = prior(z_end)
    nfe = jnp.full(x.shape[:1], fixed_step_nfe(method, n), jnp.int32)
    return LikelihoodOutput(lp + delta, nfe, z_end, lp, delta)


__all__ = ["FIXED_METHODS", "fixed_step_nfe", "likelihood_grid", "log_likelihood_fixed"]
