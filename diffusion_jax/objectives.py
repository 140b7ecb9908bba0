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
paired). This module holds the objective's config schema and validation, the loss, and named presets.

**Adding parts.** Each kind has a public ``register_*`` function and accepts a ``'module:Name'``
reference wherever a name is accepted (`extensions`; docs/design.md shows one of each).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

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
from diffusion_jax.interpolants import PATH_NOISES, Interpolant, gaussian_source
from diffusion_jax.interpolants import check_source as check_interp_source
from diffusion_jax.schedules import Schedule, get_schedule
from diffusion_jax.time_distributions import TIME_DISTRIBUTIONS, TimeDistribution  # noqa: F401
from diffusion_jax.weightings import WEIGHTINGS, Weighting  # noqa: F401

Array = jax.Array

# -------------------------------------------------------------------------------------------------
# Config schema and validation
# -------------------------------------------------------------------------------------------------

PRECONDITIONINGS = ("none", "edm")


def default_objective_config() -> ml_collections.ConfigDict:
    """The objective config schema with defaults (rectified flow, velocity, FM loss, uniform t).

    Fields: schedule, schedule_kwargs, shift (SD3 shift or None); prediction (network output kind,
    `predictions.KINDS`); preconditioning ('none' | 'edm': EDM's c_in/c_noise/c_skip/c_out, output
    kind must be 'x0' and it overrides time_input/input_scaling); time_input, input_scaling
    (`predictions.TIME_INPUTS`, `predictions.INPUT_SCALINGS`); sigma_data; weighting and
    weighting_kwargs; time_distribution and time_kwargs; coupling and coupling_kwargs; t_eps (t is
    clipped to [t_eps, 1 - t_eps]); label_dropout (CFG: each label is replaced by the null label with
    this probability, and each caption / context mask is emptied with it, independently) and
    null_label (-1 means "num_classes": pass `num_classes` to `make_loss`).

    Interpolants (`diffusion_jax.interpolants`): path_noise ('none' | 'constant' | 'bridge') and
    path_sigma (>= 0) add c(t) eps to the path, x_t = alpha x1 + sigma_t x0 + c(t) eps (CFM's sigma,
    SB-CFM's / stochastic interpolants' Brownian bridge); the network then predicts the conditional
    velocity (prediction='velocity', weighting='fm'). score_head: the network's last axis holds
    [velocity, score] (twice the data channels); the score head regresses the conditional score
    -eps/c with weight c(t)^2 * score_weight (SB-CFM, Tong et al. 2024b eq. 13 with lambda(t) ~ c(t)).

    coupling_kwargs may keep another coupling's kwargs at *their defaults* (so switching the coupling
    of a preset is one field); a non-default kwarg the chosen coupling does not take is an error.
    """
    return ml_collections.ConfigDict(
        dict(
            schedule="rectified_flow",
            schedule_kwargs={},
            shift=None,
            prediction="velocity",
            preconditioning="none",
            time_input="t",
            input_scaling="none",
            sigma_data=0.5,
            weighting="fm",
            weighting_kwargs={},
            time_distribution="uniform",
            time_kwargs={},
            coupling="independent",
            coupling_kwargs={},
            t_eps=1e-5,
            label_dropout=0.0,
            null_label=-1,
            path_noise="none",
            path_sigma=0.0,
            score_head=False,
            score_weight=1.0,
        )
    )


_FIELDS = tuple(default_objective_config().keys())


def _get(cfg, name):
    if isinstance(cfg, Mapping):
        return cfg.get(name, default_objective_config()[name])
    return getattr(cfg, name, default_objective_config()[name])


def _merge_kwargs(defaults: dict, name: str, kwargs, field: str) -> dict:
    defaults = dict(defaults)
    kwargs = dict(kwargs or {})
    bad = sorted(set(kwargs) - set(defaults))
    if bad:
        raise ValueError(
            f"objective.{field}: unknown kwarg(s) {bad} for {name!r}; valid kwargs: {sorted(defaults)}"
        )
    defaults.update(kwargs)
    return defaults


def _part(get, name, field):
    """The part `name` from its module's `get` (a registered name or 'module:Name'), errors prefixed
    by the objective field."""
    try:
        return get(name)
    except ValueError as e:
        raise ValueError(f"objective.{field}: {e}") from e


def _choice(value, valid, field):
    if value not in valid:
        raise ValueError(f"objective.{field}={value!r} unknown; valid names: {sorted(valid)}")
    return value


@dataclasses.dataclass(frozen=True)
class Objective:
    """A validated, resolved objective config (hashable: usable as a static jit argument).
    Kwargs are stored as sorted tuples of (name, value) with defaults filled in."""

    schedule: Schedule
    prediction: str
    preconditioning: str
    time_input: str
    input_scaling: str
    sigma_data: float
    weighting: str
    weighting_kwargs: tuple
    time_distribution: str
    time_kwargs: tuple
    coupling: str
    coupling_kwargs: tuple
    t_eps: float
    label_dropout: float
    null_label: int
    path_noise: str = "none"
    path_sigma: float = 0.0
    score_head: bool = False
    score_weight: float = 1.0

    @property
    def interpolant(self) -> Interpolant:
        """The path x_t = alpha x1 + sigma x0 + c eps this objective trains on."""
        return Interpolant(self.schedule, self.path_noise, self.path_sigma)

    @property
    def wkw(self) -> dict:
        return dict(self.weighting_kwargs)

    @property
    def tkw(self) -> dict:
        return dict(self.time_kwargs)

    @property
    def ckw(self) -> dict:
        return dict(self.coupling_kwargs)


def resolve_objective(obj_cfg) -> Objective:
    """Validate an objective ConfigDict (or dict) and resolve it to an `Objective`.

    Raises ValueError naming the field and the valid names / kwargs; nothing is compiled.
    """
    keys = set(obj_cfg.keys())
    bad = sorted(keys - set(_FIELDS))
    if bad:
        raise ValueError(f"objective: unknown field(s) {bad}; valid fields: {list(_FIELDS)}")
    g = lambda n: _get(obj_cfg, n)  # noqa: E731
    shift = g("shift")
    if shift is not None and not float(shift) > 0:
        raise ValueError(f"objective.shift must be > 0 or None, got {shift}")
    try:
        schedule = get_schedule(g("schedule"), shift=shift, **dict(g("schedule_kwargs") or {}))
    except ValueError as e:
        raise ValueError(f"objective.schedule: {e}") from e
    prediction = _choice(g("prediction"), P.KINDS, "prediction")
    precond = _choice(g("preconditioning"), PRECONDITIONINGS, "preconditioning")
    if precond == "edm" and prediction != "x0":
        raise ValueError(
            f"objective.preconditioning='edm' makes the output an x0 prediction; set prediction='x0' "
            f"(got {prediction!r})"
        )
    time_input = _choice(g("time_input"), P.TIME_INPUTS, "time_input")
    input_scaling = _choice(g("input_scaling"), P.INPUT_SCALINGS, "input_scaling")
    sigma_data = float(g("sigma_data"))
    if not sigma_data > 0:
        raise ValueError(f"objective.sigma_data must be > 0, got {sigma_data}")
    weighting = g("weighting")
    wkw = _merge_kwargs(
        _part(WG.get_weighting, weighting, "weighting").defaults,
        weighting,
        g("weighting_kwargs"),
        "weighting_kwargs",
    )
    if "sigma_data" in wkw and wkw["sigma_data"] is None:
        wkw["sigma_data"] = sigma_data
    td = g("time_distribution")
    tdist = _part(TD.get_time_distribution, td, "time_distribution")
    tkw = _merge_kwargs(tdist.defaults, td, g("time_kwargs"), "time_kwargs")
    coupling = g("coupling")
    cdefaults = _part(C.coupling_defaults, coupling, "coupling")
    ckw = _merge_kwargs(
        cdefaults, coupling, _coupling_kwargs(coupling, cdefaults, g("coupling_kwargs")), "coupling_kwargs"
    )
    path = _resolve_path(g, prediction, weighting)
    if coupling == "schrodinger":
        if not (path["path_noise"] == "bridge" and path["path_sigma"] > 0.0):
            raise ValueError(
                "objective.coupling='schrodinger' (SB-CFM's entropic plan, reg 2 sigma^2) needs "
                f"path_noise='bridge' and path_sigma > 0 (got {path['path_noise']!r}, {path['path_sigma']})"
            )
        if ckw["sigma"] is None:
            ckw["sigma"] = path["path_sigma"]
    C.make_coupling(coupling, ckw)  # validates the fields
    t_eps = float(g("t_eps"))
    if not 0.0 <= t_eps < 0.5:
        raise ValueError(f"objective.t_eps must be in [0, 0.5), got {t_eps}")
    p = float(g("label_dropout"))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"objective.label_dropout must be in [0, 1], got {p}")
    for k, v in list(wkw.items()) + list(tkw.items()):
        if k not in ("pairing",) and v is not None and not np.isfinite(float(v)):
            raise ValueError(f"objective: kwarg {k}={v} must be finite")
    if tdist.check is not None:
        tdist.check(tkw)
    return Objective(
        schedule=schedule,
        prediction=prediction,
        preconditioning=precond,
        time_input=time_input,
        input_scaling=input_scaling,
        sigma_data=sigma_data,
        weighting=weighting,
        weighting_kwargs=tuple(sorted(wkw.items())),
        time_distribution=td,
        time_kwargs=tuple(sorted(tkw.items())),
        coupling=coupling,
        coupling_kwargs=tuple(sorted(ckw.items())),
        t_eps=t_eps,
        label_dropout=p,
        null_label=int(g("null_label")),
        **path,
    )


def _coupling_kwargs(coupling: str, defaults: dict, kwargs) -> dict:
    """coupling_kwargs without other couplings' kwargs left at their defaults (switching the coupling
    of a preset must not need a new file); anything else unknown is left for `_merge_kwargs` to name."""
    kwargs = dict(kwargs or {})
    others = {}
    for name in C.COUPLINGS:
        if name != coupling:
            for k, v in C.coupling_defaults(name).items():
                others.setdefault(k, set()).add(repr(v))
    return {k: v for k, v in kwargs.items() if k in defaults or repr(v) not in others.get(k, ())}


def _resolve_path(g, prediction: str, weighting: str) -> dict:
    """Validate the interpolant fields (path_noise, path_sigma, score_head, score_weight)."""
    noise = _choice(g("path_noise"), PATH_NOISES, "path_noise")
    try:
        sigma = float(g("path_sigma"))
    except (TypeError, ValueError):
        raise ValueError(f"objective.path_sigma must be a number >= 0, got {g('path_sigma')!r}") from None
    if not (math.isfinite(sigma) and sigma >= 0.0):
        raise ValueError(f"objective.path_sigma must be a finite number >= 0, got {sigma}")
    if noise == "none" and sigma != 0.0:
        raise ValueError(
            f"objective.path_sigma={sigma} needs objective.path_noise='constant' or 'bridge' (got 'none')"
        )
    stochastic = noise != "none" and sigma > 0.0
    if stochastic and (prediction != "velocity" or weighting != "fm"):
        raise ValueError(
            f"objective.path_noise={noise!r}: the target is the conditional velocity; set "
            f"prediction='velocity' and weighting='fm' (got {prediction!r}, {weighting!r})"
        )
    head = g("score_head")
    if not isinstance(head, (bool, np.bool_)):
        raise ValueError(f"objective.score_head must be True or False, got {head!r}")
    if head and not stochastic:
        raise ValueError(
            "objective.score_head needs path noise: path_noise='constant'|'bridge', path_sigma > 0"
        )
    sw = float(g("score_weight"))
    if not (math.isfinite(sw) and sw >= 0.0):
        raise ValueError(f"objective.score_weight must be a finite number >= 0, got {sw}")
    return dict(path_noise=noise, path_sigma=sigma, score_head=bool(head), score_weight=sw)


def validate_objective_config(obj_cfg) -> None:
    """Raise ValueError if the objective config has an unknown name, field or kwarg."""
    resolve_objective(obj_cfg)


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


def velocity_head(net_fn: P.NetFn) -> P.NetFn:
    """The velocity half of a two-head network whose last axis is [velocity, score] (score_head)."""

    def head(params, z, t_in, cond, rng):
        return net_fn(params, z, t_in, cond, rng)[..., : z.shape[-1]]

    return head


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


# -------------------------------------------------------------------------------------------------
# Presets
# -------------------------------------------------------------------------------------------------


def _preset(**overrides) -> ml_collections.ConfigDict:
    cfg = default_objective_config()
    cfg.update(overrides)
    return cfg


OBJECTIVE_PRESETS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    # DDPM / score_sde VP: linear betas, eps-prediction, L_simple (Ho et al. 2020; Song et al. 2021).
    "vp_eps": lambda: _preset(
        schedule="vp_linear", prediction="eps", weighting="eps_mse", time_distribution="uniform", t_eps=1e-3
    ),
    # Cosine schedule + v-prediction + v-MSE (Salimans & Ho 2022; Kingma & Gao: w = e^{-lambda/2}).
    "vp_v_cosine": lambda: _preset(
        schedule="vp_cosine", prediction="v", weighting="v_mse", time_distribution="uniform", t_eps=1e-3
    ),
    # EDM (Karras et al. 2022, Table 1 "ours"): sigma path, full preconditioning, lambda(sigma), log-normal.
    "edm": lambda: _preset(
        schedule="edm",
        prediction="x0",
        preconditioning="edm",
        time_input="edm",
        input_scaling="edm",
        sigma_data=0.5,
        weighting="edm",
        time_distribution="lognormal_sigma",
        time_kwargs={"P_mean": -1.2, "P_std": 1.2},
    ),
    # Rectified flow / I-CFM (Liu et al. 2023; Lipman et al. 2023).
    "rf_uniform": lambda: _preset(
        schedule="rectified_flow", prediction="velocity", weighting="fm", time_distribution="uniform"
    ),
    # SD3 (Esser et al. 2024): rectified flow with logit-normal(0, 1) times.
    "rf_logit_normal": lambda: _preset(
        schedule="rectified_flow",
        prediction="velocity",
        weighting="fm",
        time_distribution="logit_normal",
        time_kwargs={"m": 0.0, "s": 1.0},
    ),
    # OT-CFM (Tong et al. 2024, eq. 18): rectified flow with minibatch OT pairs (in-graph Sinkhorn; use
    # coupling='ot_exact' for the exact plan, paired in the input pipeline). The CFM path noise is a
    # field: path_sigma=0.1 is the paper's toy setting (0 here: the deterministic path).
    "ot_cfm": lambda: _preset(
        schedule="rectified_flow",
        prediction="velocity",
        weighting="fm",
        time_distribution="uniform",
        coupling="ot_sinkhorn",
        coupling_kwargs={"epsilon": 0.05},
        path_noise="constant",
    ),
    # I-CFM (Tong et al. 2024, eq. 14): independent pairs, x_t' = t' x1 + (1 - t') x0 + sigma eps, sigma 0.1.
    "i_cfm": lambda: _preset(
        schedule="rectified_flow",
        prediction="velocity",
        weighting="fm",
        path_noise="constant",
        path_sigma=0.1,
    ),
    # SB-CFM (Tong et al. 2024b, Alg. 3): entropic OT pairs (reg 2 sigma^2), Brownian bridge
    # c = sigma sqrt(t (1 - t)), velocity and score heads (SDE sampling with diffusion sigma^2 / 2).
    "sb_cfm": lambda: _preset(
        schedule="rectified_flow",
        prediction="velocity",
        weighting="fm",
        coupling="schrodinger",
        path_noise="bridge",
        path_sigma=0.5,
        score_head=True,
    ),
    # Stochastic interpolants (Albergo & Vanden-Eijnden 2023, eq. 2.1 / 4.1): linear I(t) with
    # gamma(t) = sqrt(t (1 - t)) (bridge, sigma 1), velocity and score heads: the diffusion
    # coefficient is chosen at sampling time.
    "si_linear": lambda: _preset(
        schedule="rectified_flow",
        prediction="velocity",
        weighting="fm",
        path_noise="bridge",
        path_sigma=1.0,
        score_head=True,
    ),
    # The trigonometric / variance-preserving interpolant (Albergo & Vanden-Eijnden 2023, eq. 4.3):
    # alpha = cos(pi t / 2), sigma = sin(pi t / 2), velocity target.
    "vp_interpolant": lambda: _preset(
        schedule="vp_cosine", schedule_kwargs={"s": 0.0}, prediction="velocity", weighting="fm"
    ),
    # Reflow (Liu et al. 2023, sec. 2.3): rectified flow on (noise, sample) pairs of a previous model,
    # supplied as batch['noise'].
    "reflow": lambda: _preset(
        schedule="rectified_flow", prediction="velocity", weighting="fm", coupling="reflow"
    ),
}


def objective_preset(name: str) -> ml_collections.ConfigDict:
    """A named objective config (a fresh ConfigDict). Raises ValueError listing the presets."""
    if name not in OBJECTIVE_PRESETS:
        raise ValueError(f"unknown objective preset {name!r}; valid presets: {sorted(OBJECTIVE_PRESETS)}")
    return OBJECTIVE_PRESETS[name]()


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
