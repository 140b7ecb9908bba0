"""Training objectives in Kingma & Gao's framework ("Understanding Diffusion Objectives as the ELBO
with Simple Data Augmentation", NeurIPS 2023): schedule + prediction kind + weighting w(lambda) + time
distribution p(t) + coupling.

Notation: z_t = alpha_t x + sigma_t eps, lambda_t = log(alpha_t^2 / sigma_t^2) (see `schedules`).
Kingma & Gao (sec. 2-3) write every diffusion / flow-matching loss as

    L_w(x) = 1/2 E_{t ~ U(0,1), eps}[ w(lambda_t) (-d lambda/dt) ||eps_hat - eps||^2 ]
           = 1/2 E_{t ~ p(t), eps}[ w(lambda_t) (-d lambda/dt) / p(t) ||eps_hat - eps||^2 ],

so a loss is fixed by w(lambda) alone; the time distribution p(t) only changes the variance (Monte
Carlo importance sampling), *unless* the weighting is defined relative to p (the "plain MSE" losses
of `weightings`, whose implied w contains p(lambda) = p(t) / |d lambda/dt|).

**The returned scalar.** `loss_fn` returns the batch mean of

    W(t) * mean_over_dims (eps_hat - eps)^2,     W(t) = 1/2 w(lambda_t) (-d lambda/dt) / p(t),

an unbiased estimate of 1/2 int w(lambda) E[mean_d (eps_hat - eps)^2] d lambda (Kingma & Gao's L_w
divided by the data dimension). It is not computed through eps_hat: the network output of kind K is
compared with the target of kind K, and W is divided by c_K^2 where ||K_hat - K|| = |c_K| ||eps_hat
- eps|| (all kinds are affine in each other, `predictions`): c_eps = 1, c_x0 = sigma/alpha,
c_v = (alpha^2 + sigma^2)/alpha, c_velocity = (alpha sigma' - sigma alpha')/alpha, c_score = 1/sigma.
This avoids dividing by sigma (or alpha) at the endpoints. Consequently the "plain MSE" weightings
return exactly the familiar numbers: `fm` + velocity output is mean ||u_hat - u||^2, `eps_mse` + eps
output is mean ||eps_hat - eps||^2, `edm` + EDM preconditioning is EDM's eq. 8 loss.

The parts live in their own modules: `weightings` (w(lambda) and the multiplier W above, with the
table of weightings), `time_distributions` (p(t)) and `couplings` (how data and source rows are
paired). The config schema and its validation are in `objective_config`, the named presets in
`presets` (both re-exported here); this module holds the loss.

**Adding parts.** Each kind has a public ``register_*`` function and accepts a ``'module:Name'``
reference wherever a name is accepted (`extensions`; docs/design.md shows one of each).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffusion_jax import couplings as C
from diffusion_jax import predictions as P
from diffusion_jax import time_distributions as TD
from diffusion_jax import weightings as WG
from diffusion_jax.conditioning import cond_from_batch
from diffusion_jax.couplings import (  # noqa: F401  (re-exported: their home is `couplings`)
    COUPLINGS,
    exact_ot_pairing,
    pair_batch_exact_ot,
    pair_from_plan,
    sinkhorn_pairing,
    sinkhorn_plan,
)
from diffusion_jax.interpolants import check_source as check_interp_source
from diffusion_jax.interpolants import gaussian_source
from diffusion_jax.objective_config import (  # noqa: F401  (the schema's home is `objective_config`)
    PRECONDITIONINGS,
    Objective,
    default_objective_config,
    resolve_objective,
    validate_objective_config,
)
from diffusion_jax.presets import OBJECTIVE_PRESETS, objective_preset  # noqa: F401
from diffusion_jax.time_distributions import TIME_DISTRIBUTIONS, TimeDistribution  # noqa: F401
from diffusion_jax.weightings import WEIGHTINGS, Weighting  # noqa: F401

Array = jax.Array

# -------------------------------------------------------------------------------------------------
# Time distribution and weighting of an objective
# -------------------------------------------------------------------------------------------------


def sample_time(obj: Objective, key: Array, n: int, dtype=jnp.float32) -> Array:
    """Training times t [n] from the objective's time distribution, clipped to [t_eps, 1 - t_eps]
    (`time_distributions.sample`)."""
    td = TD.get_time_distribution(obj.time_distribution)
    return TD.sample(td, obj.tkw, key, n, obj.schedule, obj.t_eps, dtype)


def time_log_density(obj: Objective, t: Array) -> Array:
    """log p(t) [n] of the objective's time distribution (`time_distributions.log_density`)."""
    td = TD.get_time_distribution(obj.time_distribution)
    return TD.log_density(td, obj.tkw, t, obj.schedule, obj.t_eps)


def _ctx(obj: Objective, t: Array) -> WG.WeightingContext:
    sch = obj.schedule
    co = sch(t)
    lam = sch.logsnr(t)
    return WG.WeightingContext(t, lam, -sch.d_logsnr(t), lambda: time_log_density(obj, t), *co)


def loss_weight(obj: Objective, t: Array, kind: str | None = None) -> Array:
    """The per-sample multiplier [n] of mean_d (K_hat - K)^2 for output kind K (default: the
    objective's prediction kind; 'eps' gives W(t) of `weightings`)."""
    kind = obj.prediction if kind is None else P.check_kind(kind)
    return WG.weight_for_kind(WG.get_weighting(obj.weighting), _ctx(obj, t), kind, obj.wkw)


def kingma_gao_weight(obj: Objective, t: Array) -> Array:
    """The Kingma & Gao weighting w(lambda_t) [n] this objective implies (with its time density):
    w = 2 W(t) p(t) / (-d lambda/dt)."""
    c = _ctx(obj, t)
    return 2.0 * loss_weight(obj, t, "eps") * jnp.exp(c.log_p()) / c.neg_dlam


# -------------------------------------------------------------------------------------------------
# Denoiser and loss construction
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VelocityHead:
    """The velocity half of a two-head network whose last axis is [velocity, score] (score_head).
    `two_heads` is the network itself (what `both_heads` restores for the interpolant SDE sampler)."""

    two_heads: P.NetFn

    def __call__(self, params, z, t_in, cond, rng):
        return self.two_heads(params, z, t_in, cond, rng)[..., : z.shape[-1]]


def velocity_head(net_fn: P.NetFn) -> P.NetFn:
    """The velocity half of a two-head network whose last axis is [velocity, score] (score_head)."""
    return VelocityHead(net_fn)


def both_heads(denoiser: P.Denoiser) -> P.Denoiser:
    """The two-head [velocity, score] denoiser behind a velocity-head one (`head='velocity'` of a
    score_head objective), with the same parameters and conditioning; any other denoiser unchanged."""
    fn = denoiser.net_fn
    return denoiser.replace(net_fn=fn.two_heads) if isinstance(fn, VelocityHead) else denoiser


def make_denoiser_from_config(obj_cfg, net_fn: P.NetFn, params=None, head: str = "velocity") -> P.Denoiser:
    """The `predictions.Denoiser` (schedule, output kind, preconditioning) the objective trains, so
    that sampling uses the identical preconditioning. `obj_cfg` is a ConfigDict or an `Objective`.
    With `score_head` the network has two heads: `head='velocity'` (what every ODE sampler uses) or
    'both' (the raw [velocity, score] output on the last axis, for the interpolant SDE sampler)."""
    obj = obj_cfg if isinstance(obj_cfg, Objective) else resolve_objective(obj_cfg)
    if head not in ("velocity", "both"):
        raise ValueError(f"head={head!r} unknown; valid: ['both', 'velocity']")
    if obj.score_head and head == "velocity":
        net_fn = velocity_head(net_fn)
    return P.make_denoiser(
        net_fn,
        obj.schedule,
        obj.prediction,
        time_input=obj.time_input,
        input_scaling=obj.input_scaling,
        edm=obj.preconditioning == "edm",
        sigma_data=obj.sigma_data,
        params=params,
    )


def check_source(obj_cfg, source, data_shape: tuple | None = None) -> None:
    """Raise ValueError (before compiling) if `source` (an `interpolants.Source`) cannot serve this
    objective: no sampler, or a coupling that pairs by the squared Euclidean cost (ot_sinkhorn,
    ot_exact, schrodinger) with a source whose samples do not have the data's shape [data_shape]."""
    obj = obj_cfg if isinstance(obj_cfg, Objective) else resolve_objective(obj_cfg)
    check_interp_source(source)
    cls = C.coupling_class(obj.coupling)
    ev = getattr(source, "event_shape", None)
    if cls.needs_cost and data_shape is not None and ev is not None and tuple(ev) != tuple(data_shape):
        raise ValueError(
            f"objective.coupling={obj.coupling!r} pairs by the squared distance between data and source "
            f"samples, but source {source.name!r} draws shape {tuple(ev)} and the data has {tuple(data_shape)}"
        )


def make_loss(obj_cfg, net_fn: P.NetFn, *, num_classes: int | None = None, source=None):
    """Build `loss_fn(params, batch, key) -> (scalar, metrics)` and the matching `Denoiser`.

    Args:
      obj_cfg: objective ConfigDict (schema: `default_objective_config`), validated here.
      net_fn: `net_fn(params, z_in, t_in, cond, rng) -> out` (`predictions.NetFn`).
      num_classes: resolves null_label=-1 (the null label is then `num_classes`); needed only when
        label_dropout > 0 and null_label == -1. 0: no class labels (text-conditioned models), so the
        dropout only empties caption / context masks.
      source: the t = 1 distribution (`interpolants.Source`) drawn in-graph when the batch has no
        'noise'; default the standard normal (`gaussian_source()`, whose draw is the historical
        `jax.random.normal(key, x.shape)`, so Gaussian-path losses are unchanged bit for bit).
    Batch: dict with 'x' [B, ...] (data), optional 'label' [B] int, 'context' [B, L, E],
      'context_mask' [B, L], 'noise' [B, ...] (the t=1 endpoint paired with x; required by the
      'ot_exact' and 'reflow' couplings).
    Returns (loss_fn, denoiser). The scalar is the batch mean of loss_weight(t) * mean_d (out -
    target)^2 in the network's output kind (module docstring); metrics: 'loss', 'mse' (unweighted
    output-kind MSE), 'eps_mse' (unweighted eps-hat MSE), 'weight_mean', 't_mean'.
    """
    obj = resolve_objective(obj_cfg)
    null = obj.null_label
    if obj.label_dropout > 0 and null == -1:
        if num_classes is None:
            raise ValueError(
                "objective.null_label=-1 means 'num_classes' but make_loss got num_classes=None; "
                "pass num_classes or set objective.null_label explicitly"
            )
        # num_classes=0: no class labels, the dropout applies to captions / context only.
        null = int(num_classes) or None
    source = gaussian_source() if source is None else source
    check_source(obj, source)
    denoiser = make_denoiser_from_config(obj, net_fn)
    train_den = make_denoiser_from_config(obj, net_fn, head="both")
    sch = obj.schedule
    interp = obj.interpolant
    coupling = C.make_coupling(obj.coupling, obj.ckw)

    def loss_fn(params, batch, key):
        if "x" not in batch:
            raise ValueError(f"the batch needs 'x' (data [B, ...]); got keys {sorted(batch)}")
        x = batch["x"]
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"batch['x'] must be floating, got {x.dtype}")
        b = x.shape[0]
        k_t, k_eps, k_drop, k_pair, k_net = jax.random.split(key, 5)
        if "noise" in batch:
            eps = batch["noise"]
            if eps.shape != x.shape:
                raise ValueError(
                    f"batch['noise'] shape {tuple(eps.shape)} != batch['x'] shape {tuple(x.shape)}"
                )
        elif coupling.needs_noise:
            raise ValueError(
                f"coupling {obj.coupling!r} needs the paired noise in batch['noise'] "
                "(a host-side coupling such as ot_exact pairs it in the input pipeline: `Coupling.pair_host`)"
            )
        else:
            check_source(obj, source, x.shape[1:])
            eps = source.sample(k_eps, x.shape, x.dtype)
        eps = coupling.pair(k_pair, x, eps)
        t = sample_time(obj, k_t, b, x.dtype)
        # The source draw (eps) is the interpolant's x0; the path's own noise is a separate draw.
        path_eps = (
            jax.random.normal(jax.random.fold_in(k_eps, 1), x.shape, x.dtype) if interp.stochastic else None
        )
        z = interp.interpolate(x, eps, path_eps, t)
        cond = cond_from_batch(batch, k_drop, obj.label_dropout, null)
        out = train_den.replace(params=params, cond=cond).raw(z, t, k_net)
        if obj.score_head:
            out, s_hat = out[..., : x.shape[-1]], out[..., x.shape[-1] :]
        if interp.stochastic:
            tgt = interp.velocity(x, eps, path_eps, t)
        else:
            tgt = P.target(obj.prediction, x, eps, t, sch)
        axes = tuple(range(1, x.ndim))
        mse = jnp.mean((out - tgt) ** 2, axis=axes)
        w = jax.lax.stop_gradient(loss_weight(obj, t))
        loss = jnp.mean(w * mse)
        metrics = {"mse": jnp.mean(mse), "weight_mean": jnp.mean(w), "t_mean": jnp.mean(t)}
        if not interp.stochastic:
            eps_hat = P.to_x0_eps(out, obj.prediction, z, t, sch)[1]
            metrics["eps_mse"] = jnp.mean((jax.lax.stop_gradient(eps_hat) - eps) ** 2)
        if obj.score_head:
            # c^2 ||s_hat - (-path_eps / c)||^2 = ||c s_hat + path_eps||^2: finite at every t.
            score_mse = jnp.mean((P.bcast(interp.c(t), x) * s_hat + path_eps) ** 2, axis=axes)
            metrics["score_mse"] = jnp.mean(score_mse)
            loss = loss + obj.score_weight * jnp.mean(score_mse)
        metrics["loss"] = loss
        return loss, metrics

    return loss_fn, denoiser


__all__ = [
    "COUPLINGS",
    "OBJECTIVE_PRESETS",
    "Objective",
    "TIME_DISTRIBUTIONS",
    "WEIGHTINGS",
    "default_objective_config",
    "exact_ot_pairing",
    "kingma_gao_weight",
    "loss_weight",
    "make_denoiser_from_config",
    "check_source",
    "make_loss",
    "velocity_head",
    "VelocityHead",
    "both_heads",
    "objective_preset",
    "pair_batch_exact_ot",
    "pair_from_plan",
    "resolve_objective",
    "sample_time",
    "sinkhorn_pairing",
    "sinkhorn_plan",
    "time_log_density",
    "validate_objective_config",
]
