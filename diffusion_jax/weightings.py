"""Loss weightings as functions of logSNR, in Kingma & Gao's framework ("Understanding Diffusion
Objectives as the ELBO with Simple Data Augmentation", NeurIPS 2023).

Notation: z_t = alpha_t x + sigma_t eps, lambda_t = log(alpha_t^2 / sigma_t^2) (see `schedules`).
Every diffusion / flow-matching loss is

    L_w(x) = 1/2 E_{t ~ p(t), eps}[ w(lambda_t) (-d lambda/dt) / p(t) ||eps_hat - eps||^2 ],

fixed by the weighting w(lambda) alone; p(t) (`time_distributions`) only changes the variance, unless
the weighting is defined relative to p (the "plain MSE" losses below, whose implied w contains
p(lambda) = p(t) / |d lambda/dt|). The training loss multiplies mean_d (eps_hat - eps)^2 by

    W(t) = 1/2 w(lambda_t) (-d lambda/dt) / p(t),

and a network of output kind K is compared in its own kind with W / c_K^2, where ||K_hat - K|| =
|c_K| ||eps_hat - eps|| (all kinds are affine in each other, `predictions`): c_eps = 1,
c_x0 = sigma/alpha, c_v = (alpha^2 + sigma^2)/alpha, c_velocity = (alpha sigma' - sigma alpha')/alpha,
c_score = 1/sigma (`c_kind`). This avoids dividing by sigma (or alpha) at the endpoints.

**Weightings** (`WEIGHTINGS`; W the multiplier above, w the Kingma & Gao weighting):
  * ``elbo``      w = 1 (the continuous-time ELBO up to its constant; VDM, Kingma et al. 2021).
                  W = (-dlambda/dt) / (2 p(t)): importance-weighted.
  * ``sigmoid``   w = sigmoid(b - lambda) (Kingma & Gao sec. 5, their monotonic weighting; kwarg b,
                  default 0). Importance-weighted.
  * ``eps_mse``   W = 1: plain eps-MSE (Ho et al. 2020 L_simple); w = 2 p(lambda).
  * ``x0_mse``    plain x0-MSE: W = c_x0^2 = e^-lambda; w = 2 p(lambda) e^-lambda.
  * ``v_mse``     plain v-MSE (Salimans & Ho 2022): W = c_v^2; for VP paths 1 + e^-lambda, and with the
                  cosine schedule and uniform t w = (2/pi) e^{-lambda/2} (Kingma & Gao App. D).
  * ``fm``        plain flow-matching velocity MSE (Lipman et al. 2023 CFM loss; Liu et al. 2023):
                  W = c_velocity^2. For rectified flow / CondOT with uniform t, W = 1/(1-t)^2 and
                  w = e^{-lambda/2} exactly (Kingma & Gao App. D, flow matching with the OT path).
  * ``snr``       SNR-weighted x0-MSE (Hang et al. 2023, eq. 5 baseline): W = e^lambda c_x0^2 = 1,
                  i.e. the same loss as eps_mse (kept as a named, tested equivalence).
  * ``min_snr``   Min-SNR-gamma (Hang et al. 2023, eq. 6): x0-MSE weighted by min(SNR, gamma), W =
                  min(1, gamma e^-lambda); w = 2 p(lambda) min(1, gamma e^-lambda). kwarg gamma (5.0).
  * ``truncated_snr`` max(SNR, 1)-weighted x0-MSE (Salimans & Ho 2022 sec. 4): W = max(1, e^-lambda).
  * ``edm``       EDM (Karras et al. 2022, eq. 8 and Table 1): x0-MSE weighted by
                  lambda(sigma) = (sigma^2 + sigma_data^2)/(sigma sigma_data)^2 with sigma = sigma_t/alpha_t:
                  W = 1 + e^-lambda / sigma_data^2; w = 2 p(lambda)(e^-lambda + sigma_data^2)/sigma_data^2
                  (Kingma & Gao App. D, with p the log-normal density of `lognormal_sigma`).

**Adding one** (outside the package): write `weight(ctx, **kwargs)` over a `WeightingContext` and
call `register_weighting(name, Weighting(weight, defaults))`, or name it as ``'module:Attribute'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax import extensions

Array = jax.Array


class WeightingContext(NamedTuple):
    """Per-sample quantities a weighting may use (all [n]): t, lam = lambda_t, neg_dlam = -d lambda/dt
    (> 0), log_p() = log p(t) of the time distribution (computed only if called), and the schedule's
    alpha, sigma and their time derivatives."""

    t: Array
    lam: Array
    neg_dlam: Array
    log_p: Callable[[], Array]
    alpha: Array
    sigma: Array
    d_alpha: Array
    d_sigma: Array


def c_kind(kind: str, c: WeightingContext) -> Array:
    """|c_K| [n] with ||K_hat - K|| = |c_K| ||eps_hat - eps|| at this time (module docstring)."""
    a, s = c.alpha, c.sigma
    if kind == "eps":
        return jnp.ones_like(a)
    if kind == "x0":
        return s / a
    if kind == "v":
        return (a**2 + s**2) / a
    if kind == "velocity":
        return jnp.abs(a * c.d_sigma - s * c.d_alpha) / a
    return 1.0 / s


class Weighting(NamedTuple):
    """weight(ctx, **kw) -> W [n] multiplying mean_d (eps_hat - eps)^2 (module docstring), or a pair
    (kind, W_kind) meaning W = W_kind * c_kind^2 (W_kind multiplies the `kind` MSE directly).
    defaults: the kwargs (``objective.weighting_kwargs``) and their default values."""

    weight: Callable
    defaults: dict


def importance(w_of_lam: Callable) -> Callable:
    """A `Weighting.weight` for w(lambda) with importance sampling: W = 1/2 w (-dlambda/dt) / p(t)."""

    def weight(c, **kw):
        return 0.5 * w_of_lam(c.lam, **kw) * c.neg_dlam * jnp.exp(-c.log_p())

    return weight


def mse(kind: str, w_kind: Callable | None = None) -> Callable:
    """A `Weighting.weight` for a plain MSE in output kind `kind`, optionally weighted by w_kind(ctx)."""

    def weight(c, **kw):
        return kind, (jnp.ones_like(c.t) if w_kind is None else w_kind(c, **kw))

    return weight


def _edm(c, sigma_data):
    # lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 with sigma^2 = e^-lambda
    return (jnp.exp(-c.lam) + sigma_data**2) * jnp.exp(c.lam) / sigma_data**2


WEIGHTINGS: dict[str, Weighting] = {
    "elbo": Weighting(importance(lambda lam: jnp.ones_like(lam)), {}),
    "sigmoid": Weighting(importance(lambda lam, b: jax.nn.sigmoid(b - lam)), {"b": 0.0}),
    "eps_mse": Weighting(mse("eps"), {}),
    "x0_mse": Weighting(mse("x0"), {}),
    "v_mse": Weighting(mse("v"), {}),
    "fm": Weighting(mse("velocity"), {}),
    "snr": Weighting(mse("x0", lambda c: jnp.exp(c.lam)), {}),
    "min_snr": Weighting(mse("x0", lambda c, gamma: jnp.minimum(jnp.exp(c.lam), gamma)), {"gamma": 5.0}),
    "truncated_snr": Weighting(mse("x0", lambda c: jnp.maximum(jnp.exp(c.lam), 1.0)), {}),
    "edm": Weighting(mse("x0", _edm), {"sigma_data": None}),
}
"""The built-in weightings; `register_weighting` adds to this table."""


def register_weighting(name: str, weighting: Weighting, *, overwrite: bool = False) -> Weighting:
    """Make `weighting` available as ``objective.weighting=name`` (an explicit call; see `extensions`)."""
    return extensions.register(
        WEIGHTINGS, "weighting", name, weighting, overwrite=overwrite, expect=Weighting
    )


def get_weighting(name: str) -> Weighting:
    """The weighting called `name` (or a ``'module:Attribute'`` reference); ValueError listing names."""
    return extensions.lookup(WEIGHTINGS, "weighting", name, expect=Weighting)


def weight_for_kind(weighting: Weighting, c: WeightingContext, kind: str, kwargs: dict) -> Array:
    """The multiplier [n] of mean_d (K_hat - K)^2 for output kind `kind` under `weighting`."""
    out = weighting.weight(c, **kwargs)
    if isinstance(out, tuple):
        wkind, w = out
        if wkind == kind:
            return w
        return w * (c_kind(wkind, c) / c_kind(kind, c)) ** 2
    return out / c_kind(kind, c) ** 2


__all__ = [
    "WEIGHTINGS",
    "Weighting",
    "WeightingContext",
    "c_kind",
    "get_weighting",
    "importance",
    "mse",
    "register_weighting",
    "weight_for_kind",
]
