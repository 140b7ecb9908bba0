"""Prediction kinds, the conversions between them, EDM preconditioning, and the denoiser description.

On a path z = alpha x + sigma eps (see `schedules`), a network may predict any of

  * ``eps``      the noise eps                              (Ho et al. 2020)
  * ``x0``       the clean data x                           (Karras et al. 2022 "D(x; sigma)")
  * ``v``        alpha eps - sigma x                        (Salimans & Ho 2022, sec. 4)
  * ``velocity`` dz/dt = alpha' x + sigma' eps              (Lipman et al. 2023; Liu et al. 2023)
  * ``score``    grad log p_t(z) = -eps / sigma             (Song et al. 2021)

Given (z, t, schedule) each determines the pair (x0, eps) and hence every other kind; all maps are
affine in the prediction (Gao et al. 2024, "Diffusion meets flow matching"). This module is the one
place those formulas live. Endpoints: converting *from* eps needs alpha > 0 (fails at pure noise,
e.g. VP-cosine t=1); converting *from* x0 or v needs sigma > 0 (fails on clean data, t=0 of VP or
RF); `velocity` needs alpha sigma' - sigma alpha' != 0, true for every schedule in `schedules`.

A `Denoiser` bundles a pure network function with its static description (schedule, output kind,
input/time transforms, optional EDM preconditioning). It is a pytree whose leaves are the network
parameters and the conditioning, so samplers jit over it without retracing when parameters change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffusion_jax.schedules import Schedule

Array = jax.Array

KINDS = ("eps", "x0", "v", "velocity", "score")


def check_kind(kind: str, field: str = "kind") -> str:
    """Return `kind` if it is a known prediction kind, else raise ValueError naming `field`."""
    if kind not in KINDS:
        raise ValueError(f"unknown prediction {field} {kind!r}; valid kinds: {list(KINDS)}")
    return kind


def bcast(c, z: Array) -> Array:
    """Broadcast a per-sample coefficient c (shape () or [B]) against z ([B, ...]).

    Raises ValueError (at trace time, before compilation) when the shapes do not fit.
    """
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    if c.ndim != 1 or z.ndim == 0 or c.shape[0] not in (1, z.shape[0]):
        raise ValueError(
            f"time/coefficient shape {tuple(c.shape)} does not broadcast against samples of shape "
            f"{tuple(z.shape)}: expected () or ({z.shape[0] if z.ndim else '?'},)"
        )
    return c.reshape(c.shape + (1,) * (z.ndim - 1))


def to_x0_eps(pred: Array, kind: str, z: Array, t, schedule: Schedule) -> tuple[Array, Array]:
    """Turn a prediction of `kind` at (z, t) into the implied (x0, eps) pair. Shapes follow z."""
    check_kind(kind)
    a, s, da, ds = (bcast(c, z) for c in schedule(t))
    if kind == "x0":
        x0 = pred
        eps = (z - a * x0) / s
    elif kind == "eps":
        eps = pred
        x0 = (z - s * eps) / a
    elif kind == "v":
        # v = a eps - s x  =>  a z - s v = (a^2 + s^2) x,  s z + a v = (a^2 + s^2) eps
        n = a**2 + s**2
        x0 = (a * z - s * pred) / n
        eps = (s * z + a * pred) / n
    elif kind == "velocity":
        # [a s; a' s'] [x; eps] = [z; u]
        det = a * ds - s * da
        x0 = (ds * z - s * pred) / det
        eps = (a * pred - da * z) / det
    else:  # score = -eps / sigma
        eps = -s * pred
        x0 = (z - s * eps) / a
    return x0, eps


def from_x0_eps(x0: Array, eps: Array, kind: str, z: Array, t, schedule: Schedule) -> Array:
    """The prediction of `kind` implied by (x0, eps) at time t (z only supplies the shape)."""
    check_kind(kind)
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    a, s, da, ds = (bcast(c, z) for c in schedule(t))
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        return da * x0 + ds * eps
    return -eps / s


def convert(pred: Array, from_kind: str, to_kind: str, z: Array, t, schedule: Schedule) -> Array:
    """Convert a prediction between kinds at (z, t) under `schedule`. Affine in `pred`.

    Args:
      pred: [B, ...] prediction of kind `from_kind`.
      z: [B, ...] noisy input at time t.
      t: scalar or [B] times in [0, 1].
    Returns: [B, ...] prediction of kind `to_kind`.
    """
    check_kind(from_kind, "from_kind")
    check_kind(to_kind, "to_kind")
    if from_kind == to_kind:
        return pred
    x0, eps = to_x0_eps(pred, from_kind, z, t, schedule)
    return from_x0_eps(x0, eps, to_kind, z, t, schedule)


def target(kind: str, x0: Array, eps: Array, t, schedule: Schedule) -> Array:
    """The regression target of `kind` for clean data x0 and noise eps at time t."""
    return from_x0_eps(x0, eps, kind, x0, t, schedule)


# -------------------------------------------------------------------------------------------------
# Network input / time transforms and EDM preconditioning
# -------------------------------------------------------------------------------------------------


def _time_inputs(schedule: Schedule) -> dict[str, Callable[[Array], Array]]:
    def sigma_tilde(t):
        return schedule.sigma(t) / schedule.alpha(t)

    return {
        "t": lambda t: t,
        "t999": lambda t: 999.0 * t,  # RectifiedFlow / InstaFlow convention
        "t1000": lambda t: 1000.0 * t,  # score_sde VP convention (t * (N - 1) ~ t * 999 .. 1000)
        "ddpm_index": lambda t: t * getattr(schedule, "num_steps", 1000) - 1.0,
        "logsnr": schedule.logsnr,
        "sigma": sigma_tilde,  # NCSN / VE convention (sigma of the alpha=1 rescaled path)
        "edm": lambda t: 0.25 * jnp.log(sigma_tilde(t)),  # EDM c_noise, Table 1
    }


TIME_INPUTS = ("t", "t999", "t1000", "ddpm_index", "logsnr", "sigma", "edm")
INPUT_SCALINGS = ("none", "alpha", "edm")


@dataclasses.dataclass(frozen=True)
class Preconditioning:
    """How the raw network sees (z, t) and what its output means.

    Attributes:
      time_input: transform of t fed to the network, one of TIME_INPUTS (`edm` is c_noise = ln(sigma)/4).
      input_scaling: `none` (z as is), `alpha` (z / alpha: the alpha=1 rescaled path of EDM eq. 4), or
        `edm` (c_in = 1 / sqrt(sigma~^2 + sigma_data^2) applied to z / alpha, EDM Table 1).
      edm_output: if True the network output F is wrapped as D = c_skip z~ + c_out F and is an x0
        prediction (EDM Table 1, eq. 7), with z~ = z / alpha and sigma~ = sigma / alpha.
      sigma_data: the data standard deviation of EDM's preconditioning.
    """

    time_input: str = "t"
    input_scaling: str = "none"
    edm_output: bool = False
    sigma_data: float = 0.5

    def __post_init__(self):
        if self.time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {self.time_input!r}; valid: {list(TIME_INPUTS)}")
        if self.input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"unknown input_scaling {self.input_scaling!r}; valid: {list(INPUT_SCALINGS)}")


def edm_coefficients(sigma: Array, sigma_data: float = 0.5) -> tuple[Array, Array, Array, Array]:
    """EDM preconditioning (Karras et al. 2022, Table 1): c_skip, c_out, c_in, c_noise at sigma."""
    s2 = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / jnp.sqrt(s2)
    c_in = 1.0 / jnp.sqrt(s2)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def EDM_PRECONDITIONING(sigma_data: float = 0.5) -> Preconditioning:  # noqa: N802
    """The full EDM preconditioning: c_in input scaling, c_noise time input, c_skip/c_out output."""
    return Preconditioning(time_input="edm", input_scaling="edm", edm_output=True, sigma_data=sigma_data)


# -------------------------------------------------------------------------------------------------
# The denoiser
# -------------------------------------------------------------------------------------------------

NetFn = Callable[..., Array]  # net_fn(params, z_in, t_in, cond, rng) -> raw output


@struct.dataclass
class Denoiser:
    """A pure network function plus its static description; a pytree over (params, cond).

    Attributes:
      net_fn: `net_fn(params, z_in [B,...], t_in [B], cond, rng) -> out [B,...]`, pure.
      schedule: the path the network was trained on.
      kind: what the (preconditioned) output predicts, one of KINDS (`x0` when `edm_output`).
      precond: input scaling, time input and EDM output wrapping.
      params: network parameters (pytree leaf data).
      cond: conditioning passed through to net_fn (None, or a dict of [B, ...] arrays).

    `predict(z, t, kind)` returns any kind; `x0`, `eps`, `velocity`, `score` are shorthands. t may be
    a scalar or [B]. Samplers only use these methods, so any model works with any sampler.
    """

    net_fn: NetFn = struct.field(pytree_node=False)
    schedule: Schedule = struct.field(pytree_node=False)
    kind: str = struct.field(pytree_node=False, default="x0")
    precond: Preconditioning = struct.field(pytree_node=False, default=Preconditioning())
    params: Any = None
    cond: Any = None

    def __post_init__(self):
        check_kind(self.kind, "kind")
        if self.precond.edm_output and self.kind != "x0":
            raise ValueError(f"EDM output preconditioning predicts x0; got kind={self.kind!r}")

    def with_cond(self, cond) -> Denoiser:
        return self.replace(cond=cond)

    def with_params(self, params) -> Denoiser:
        return self.replace(params=params)

    def raw(self, z: Array, t, rng=None) -> Array:
        """The prediction of `self.kind` at (z, t): network call with the input/time transforms."""
        t = jnp.asarray(t, dtype=z.dtype)
        t_b = jnp.broadcast_to(t, (z.shape[0],)) if t.ndim == 0 else t
        bcast(t_b, z)  # shape check with a clear message
        alpha = bcast(self.schedule.alpha(t_b), z)
        sigma_t = self.schedule.sigma(t_b) / self.schedule.alpha(t_b)
        p = self.precond
        if p.input_scaling == "none":
            z_in = z
        elif p.input_scaling == "alpha":
            z_in = z / alpha
        else:
            z_in = z / alpha * bcast(edm_coefficients(sigma_t, p.sigma_data)[2], z)
        t_in = _time_inputs(self.schedule)[p.time_input](t_b)
        out = self.net_fn(self.params, z_in, t_in, self.cond, rng)
        if p.edm_output:
            c_skip, c_out, _, _ = edm_coefficients(sigma_t, p.sigma_data)
            out = bcast(c_skip, z) * (z / alpha) + bcast(c_out, z) * out
        return out

    def predict(self, z: Array, t, kind: str = "x0", rng=None) -> Array:
        """Prediction of `kind` ([B, ...]) at noisy samples z ([B, ...]) and time t (() or [B])."""
        return convert(self.raw(z, t, rng), self.kind, kind, z, t, self.schedule)

    def x0(self, z, t):
        return self.predict(z, t, "x0")

    def eps(self, z, t):
        return self.predict(z, t, "eps")

    def velocity(self, z, t):
        return self.predict(z, t, "velocity")

    def score(self, z, t):
        return self.predict(z, t, "score")

    def x0_eps(self, z, t, rng=None):
        """(x0-hat, eps-hat) from one network call."""
        return to_x0_eps(self.raw(z, t, rng), self.kind, z, t, self.schedule)


def reparameterize(denoiser: Denoiser, schedule: Schedule) -> Denoiser:
    """Sample a model trained on one path under another, matching logSNR (Kingma et al. 2021,
    sec. 4.4 "invariance to the noise schedule"; Gao et al. 2024).

    At new time t' with (alpha', sigma'), the old model is queried at t = old.t_from_logsnr(
    new.logsnr(t')) on z * alpha(t) / alpha'(t'): both have the same signal-to-noise ratio, so
    x0-hat is unchanged and eps-hat too. The result predicts x0 under `schedule`.
    """
    old = denoiser

    def net_fn(params, z, t_new, cond, rng):
        t_old = old.schedule.t_from_logsnr(schedule.logsnr(t_new))
        scale = old.schedule.alpha(t_old) / schedule.alpha(t_new)
        inner = old.replace(params=params, cond=cond)
        return inner.predict(z * bcast(scale, z), t_old, "x0", rng)

    return Denoiser(
        net_fn=net_fn,
        schedule=schedule,
        kind="x0",
        precond=Preconditioning(),
        params=denoiser.params,
        cond=denoiser.cond,
    )


def make_denoiser(
    net_fn: NetFn,
    schedule: Schedule,
    kind: str,
    *,
    time_input: str = "t",
    input_scaling: str = "none",
    edm: bool = False,
    sigma_data: float = 0.5,
    params=None,
    cond=None,
) -> Denoiser:
    """Convenience constructor. `edm=True` applies the full EDM preconditioning (kind must be x0)."""
    check_kind(kind)
    if edm:
        precond = EDM_PRECONDITIONING(sigma_data)
    else:
        precond = Preconditioning(time_input=time_input, input_scaling=input_scaling, sigma_data=sigma_data)
    return Denoiser(net_fn=net_fn, schedule=schedule, kind=kind, precond=precond, params=params, cond=cond)


__all__ = [
    "KINDS",
    "TIME_INPUTS",
    "INPUT_SCALINGS",
    "Denoiser",
    "Preconditioning",
    "EDM_PRECONDITIONING",
    "bcast",
    "check_kind",
    "convert",
    "edm_coefficients",
    "from_x0_eps",
    "make_denoiser",
    "reparameterize",
    "target",
    "to_x0_eps",
]
