"""Classifier-free guidance, negative conditioning and guidance intervals, as Denoiser wrappers.

`cfg_denoiser(denoiser, cond, uncond, scale, interval)` returns a new `Denoiser` that any sampler can
use unchanged (no sampler is copied). At every call it evaluates the wrapped network ONCE on the
batch [z; z] with conditioning [cond; uncond] (concatenated along the batch axis) and combines

    guided = uncond_out + w * (cond_out - uncond_out)      (Ho & Salimans 2022, eq. 6)

with w = `scale` inside the guidance interval and w = 1 (plain conditional prediction) outside it.

Which prediction is guided: the wrapped denoiser's own output kind (`denoiser.kind`, after its EDM
output preconditioning if any). This is the same as guiding x0-hat or eps-hat: every kind is an
affine function of that output whose coefficients depend only on (z, t), which both branches share,
and the combination has weights summing to one, so it commutes with those maps (exactly in exact
arithmetic; to rounding in floating point). Ho & Salimans write it for eps, EDM-style code for x0.

Negative conditioning: pass the negative condition as `uncond`; the formula then pushes samples away
from it (the unconditional branch replaced by a negative condition).

Guidance interval (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval Improves
Sample and Distribution Quality in Diffusion Models", sec. 3): guidance is applied only for noise
levels sigma in (lo, hi], measured in sigma~ = sigma / alpha (EDM's sigma; equal to sigma on VE/EDM
paths); elsewhere the conditional prediction is used. Both branches are still evaluated in the one
batched call (the switch is a select), so the cost per step is constant and jit-friendly.

The guided denoiser's `cond` is the pair {"cond": ..., "uncond": ...}; `Denoiser.with_cond` on it (as
`seeds.sample(cond=...)` does per chunk) must therefore be given such a pair (see `guidance_cond`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from diffusion_jax.conditioning import null_condition
from diffusion_jax.predictions import Denoiser, Preconditioning, bcast

Array = jax.Array


def guidance_cond(cond, uncond) -> dict:
    """The conditioning pytree of a guided denoiser: {"cond": cond, "uncond": uncond}."""
    return {"cond": cond, "uncond": uncond}


def _check_pair(cond, uncond) -> None:
    if cond is None or uncond is None:
        raise ValueError("cfg_denoiser: `cond` and `uncond` (or the negative condition) must both be given")
    s_c, s_u = jax.tree.structure(cond), jax.tree.structure(uncond)
    if s_c != s_u:
        raise ValueError(f"cfg_denoiser: cond and uncond need the same structure, got {s_c} vs {s_u}")
    for a, b in zip(jax.tree.leaves(cond), jax.tree.leaves(uncond), strict=True):
        if jnp.ndim(a) == 0 or jnp.ndim(b) == 0:
            raise ValueError(
                "cfg_denoiser: conditioning leaves need a leading batch axis ([B, ...] or [1, ...])"
            )
        if jnp.shape(a)[1:] != jnp.shape(b)[1:]:
            raise ValueError(
                f"cfg_denoiser: cond/uncond leaf shapes {jnp.shape(a)} and {jnp.shape(b)} differ"
            )


def _check_interval(interval) -> tuple[float, float] | None:
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cfg_denoiser: `interval` must be (lo, hi) in sigma units, got {interval!r}") from e
    if not (0.0 <= lo < hi):
        raise ValueError(f"cfg_denoiser: `interval` needs 0 <= lo < hi, got ({lo}, {hi})")
    return lo, hi


def cfg_denoiser(denoiser: Denoiser, cond, uncond, scale: float, interval=None) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022) around `denoiser`, as a new `Denoiser`.

    Args:
      denoiser: the conditional model; its `net_fn` must accept the conditioning pytree batched [2B].
      cond: conditioning pytree, leaves [B, ...] (or [1, ...], broadcast to the batch).
      uncond: the unconditional (null) condition, or a negative condition; same structure and
        trailing shapes as `cond`.
      scale: guidance weight w (1 = conditional model, 0 = unconditional, > 1 = guided).
      interval: optional (lo, hi): guide only where lo < sigma~(t) <= hi (Kynkaanniemi et al. 2024);
        sigma~ = sigma / alpha. None = guide at every noise level.
    Returns:
      A `Denoiser` with the same schedule and output kind; `predict` / `x0_eps` on z [B, ...] make one
      network call on [2B, ...]. Its `cond` is `guidance_cond(cond, uncond)`.
    """
    _check_pair(cond, uncond)
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"cfg_denoiser: `scale` must be finite, got {scale}")
    net = _GuidedNet(
        denoiser.net_fn, denoiser.schedule, denoiser.kind, denoiser.precond, _check_interval(interval)
    )
    return Denoiser(
        net_fn=net,
        schedule=denoiser.schedule,
        kind=denoiser.kind,
        precond=Preconditioning(),  # z and t reach net_fn untouched; the inner call applies the real one
        # The scale is data, not structure: sweeping it (or re-wrapping with the same scale) reuses the
        # compiled sampler instead of tracing a new closure every time.
        params={"net": denoiser.params, "scale": jnp.asarray(scale)},
        cond=guidance_cond(cond, uncond),
    )


@dataclasses.dataclass(frozen=True)
class _GuidedNet:
    """The guided network function. A frozen dataclass rather than a closure so that two guided
    denoisers of the same model compare equal as static pytree metadata (jit cache hits)."""

    inner_net_fn: object
    schedule: object
    kind: str
    precond: Preconditioning
    bounds: tuple[float, float] | None

    def __call__(self, params, z, t, pair, rng):
        b = z.shape[0]

        def both(c, u):
            c = jnp.broadcast_to(c, (b,) + c.shape[1:])
            u = jnp.broadcast_to(u, (b,) + u.shape[1:])
            return jnp.concatenate([c, u], axis=0)

        cu = jax.tree.map(both, pair["cond"], pair["uncond"])
        inner = Denoiser(
            net_fn=self.inner_net_fn,
            schedule=self.schedule,
            kind=self.kind,
            precond=self.precond,
            params=params["net"],
            cond=cu,
        )
        out = inner.raw(jnp.concatenate([z, z], axis=0), jnp.concatenate([t, t], axis=0), rng)
        out_c, out_u = out[:b], out[b:]
        w = jnp.asarray(params["scale"], z.dtype)
        if self.bounds is not None:
            sig = self.schedule.sigma(t) / self.schedule.alpha(t)  # [B]
            w = jnp.where((sig > self.bounds[0]) & (sig <= self.bounds[1]), w, jnp.ones_like(sig))
            w = bcast(w, z)
        return out_u + w * (out_c - out_u)


def negative_denoiser(denoiser: Denoiser, cond, negative, scale: float, interval=None) -> Denoiser:
    """Guidance away from a negative condition: `cfg_denoiser` with `negative` as the second branch."""
    return cfg_denoiser(denoiser, cond, negative, scale, interval)


__all__ = ["cfg_denoiser", "guidance_cond", "negative_denoiser", "null_condition"]
