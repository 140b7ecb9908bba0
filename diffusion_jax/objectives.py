"""Training objectives in Kingma & Gao's framework ("Understanding Diffusion Objectives as the ELBO
with Simple Data Augmentation", NeurIPS 2023): schedule + prediction kind + weighting w(lambda) + time
distribution p(t) + coupling.

Notation: z_t = alpha_t x + sigma_t eps, lambda_t = log(alpha_t^2 / sigma_t^2) (see `schedules`).
Kingma & Gao (sec. 2-3) write every diffusion / flow-matching loss as

    L_w(x) = 1/2 E_{t ~ U(0,1), eps}[ w(lambda_t) (-d lambda/dt) ||eps_hat - eps||^2 ]
           = 1/2 E_{t ~ p(t), eps}[ w(lambda_t) (-d lambda/dt) / p(t) ||eps_hat - eps||^2 ],

so a loss is fixed by w(lambda) alone; the time distribution p(t) only changes the variance (Monte
Carlo importance sampling), *unless* the weighting is defined relative to p (the "plain MSE" losses
below, whose implied w contains p(lambda) = p(t) / |d lambda/dt|).

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

**Weightings** (`WEIGHTINGS`; W is the multiplier above, w the Kingma & Gao weighting):
  * ``elbo``      w = 1 (the continuous-time ELBO up to its constant; VDM, Kingma et al. 2021).
                  W = (-dlambda/dt) / (2 p(t)): importance-weighted.
  * ``sigmoid``   w = sigmoid(b - lambda) (Kingma & Gao sec. 5, their monotonic weighting; kwarg b,
                  default 0). Importance-weighted.
  * ``eps_mse``   W = 1: plain eps-MSE (Ho et al. 2020 L_simple); w = 2 p(lambda).
  * ``x0_mse``    plain x0-MSE: W = c_x0^2 = e^-lambda; w = 2 p(lambda) e^-lambda.
  * ``v_mse``     plain v-MSE (Salimans & Ho 2022): W = c_v^2; for VP paths 1 + e^-lambda, and with the
                  cosine schedule and uniform t w = (2/pi) e^{-lambda/2} (Kingma & Gao App. D,
                  weightings of previous work).
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

**Time distributions** (`TIME_DISTRIBUTIONS`, each with its exact density p(t)); every sample is
clipped to [t_eps, 1 - t_eps] (the schedules are singular at an endpoint: lambda = +-inf); the
densities are those of the unclipped laws (uniform is renormalised to the clipped interval):
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

**Couplings** (`COUPLINGS`) pair each data row with a noise row. If the batch carries ``noise`` it
is used as the t=1 endpoint (a pipeline-supplied source sample), otherwise standard normal noise is
drawn in-graph:
  * ``independent``   no pairing.
  * ``ot_sinkhorn``   minibatch entropic OT (Tong et al. 2024, OT-CFM; Pooladian et al. 2023) solved
                      in-graph with ott-jax Sinkhorn on squared Euclidean costs; each data row then takes
                      a noise row sampled from (or the argmax of) its row of the plan. kwargs epsilon
                      (relative to the mean cost, 0.05), pairing 'sample'|'argmax', max_iterations.
  * ``ot_exact``      exact minibatch OT computed *in the input pipeline* (`exact_ot_pairing`, numpy /
                      scipy on the host while the device trains: a host callback would stall the step);
                      the batch must carry the paired ``noise``.
  * ``reflow``        (noise, data) pairs from a previous model (Liu et al. 2023); batch ``noise``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import predictions as P
from diffusion_jax.models.conditioning import COND_KEYS, drop_context
from diffusion_jax.schedules import Schedule, get_schedule

Array = jax.Array
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

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
        )
    )


_FIELDS = tuple(default_objective_config().keys())


def _get(cfg, name):
    if isinstance(cfg, Mapping):
        return cfg.get(name, default_objective_config()[name])
    return getattr(cfg, name, default_objective_config()[name])


def _merge_kwargs(table: dict, name: str, kwargs, field: str) -> dict:
    defaults = dict(table[name].defaults)
    kwargs = dict(kwargs or {})
    bad = sorted(set(kwargs) - set(defaults))
    if bad:
        raise ValueError(
            f"objective.{field}: unknown kwarg(s) {bad} for {name!r}; valid kwargs: {sorted(defaults)}"
        )
    defaults.update(kwargs)
    return defaults


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
    weighting = _choice(g("weighting"), WEIGHTINGS, "weighting")
    wkw = _merge_kwargs(WEIGHTINGS, weighting, g("weighting_kwargs"), "weighting_kwargs")
    if weighting == "edm" and wkw["sigma_data"] is None:
        wkw["sigma_data"] = sigma_data
    td = _choice(g("time_distribution"), TIME_DISTRIBUTIONS, "time_distribution")
    tkw = _merge_kwargs(TIME_DISTRIBUTIONS, td, g("time_kwargs"), "time_kwargs")
    coupling = _choice(g("coupling"), COUPLINGS, "coupling")
    ckw = _merge_kwargs(COUPLINGS, coupling, g("coupling_kwargs"), "coupling_kwargs")
    if coupling == "ot_sinkhorn" and ckw["pairing"] not in ("sample", "argmax"):
        raise ValueError(f"objective.coupling_kwargs.pairing={ckw['pairing']!r}; valid: ['argmax', 'sample']")
    t_eps = float(g("t_eps"))
    if not 0.0 <= t_eps < 0.5:
        raise ValueError(f"objective.t_eps must be in [0, 0.5), got {t_eps}")
    p = float(g("label_dropout"))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"objective.label_dropout must be in [0, 1], got {p}")
    for k, v in list(wkw.items()) + list(tkw.items()):
        if k not in ("pairing",) and v is not None and not np.isfinite(float(v)):
            raise ValueError(f"objective: kwarg {k}={v} must be finite")
    if td == "logit_normal" and not tkw["s"] > 0:
        raise ValueError(f"objective.time_kwargs.s must be > 0, got {tkw['s']}")
    if td == "lognormal_sigma" and not tkw["P_std"] > 0:
        raise ValueError(f"objective.time_kwargs.P_std must be > 0, got {tkw['P_std']}")
    if td == "logsnr_uniform" and not tkw["lambda_max"] > tkw["lambda_min"]:
        raise ValueError("objective.time_kwargs: lambda_max must exceed lambda_min")
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
    )


def validate_objective_config(obj_cfg) -> None:
    """Raise ValueError if the objective config has an unknown name, field or kwarg."""
    resolve_objective(obj_cfg)


# -------------------------------------------------------------------------------------------------
# Time distributions
# -------------------------------------------------------------------------------------------------


class TimeDistribution(NamedTuple):
    """sample(key, n, schedule, dtype, **kw) -> t [n] (unclipped); log_density(t, schedule, **kw) ->
    log p(t) [n]; defaults: the kwargs and their default values."""

    sample: Callable
    log_density: Callable
    defaults: dict


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


TIME_DISTRIBUTIONS: dict[str, TimeDistribution] = {
    "uniform": TimeDistribution(_uniform_sample, _uniform_logp, {}),
    "antithetic": TimeDistribution(_antithetic_sample, _uniform_logp, {}),
    "stratified": TimeDistribution(_stratified_sample, _uniform_logp, {}),
    "logit_normal": TimeDistribution(_logit_normal_sample, _logit_normal_logp, {"m": 0.0, "s": 1.0}),
    "lognormal_sigma": TimeDistribution(
        _lognormal_sigma_sample, _lognormal_sigma_logp, {"P_mean": -1.2, "P_std": 1.2}
    ),
    "logsnr_uniform": TimeDistribution(
        _logsnr_uniform_sample, _logsnr_uniform_logp, {"lambda_min": -10.0, "lambda_max": 10.0}
    ),
}
_UNIFORM_FAMILY = ("uniform", "antithetic", "stratified")


def sample_time(obj: Objective, key: Array, n: int, dtype=jnp.float32) -> Array:
    """Training times t [n] from the objective's time distribution, clipped to [t_eps, 1 - t_eps].

    The uniform family is drawn on the clipped interval directly (t = t_eps + (1 - 2 t_eps) u)."""
    td = TIME_DISTRIBUTIONS[obj.time_distribution]
    t = td.sample(key, n, obj.schedule, dtype, **obj.tkw)
    if obj.time_distribution in _UNIFORM_FAMILY:
        t = obj.t_eps + (1.0 - 2.0 * obj.t_eps) * t
    return jnp.clip(t, obj.t_eps, 1.0 - obj.t_eps).astype(dtype)


def time_log_density(obj: Objective, t: Array) -> Array:
    """log p(t) [n] of the objective's time distribution (the uniform family on [t_eps, 1 - t_eps])."""
    td = TIME_DISTRIBUTIONS[obj.time_distribution]
    logp = td.log_density(t, obj.schedule, **obj.tkw)
    if obj.time_distribution in _UNIFORM_FAMILY:
        logp = logp - math.log(1.0 - 2.0 * obj.t_eps)
    return logp


# -------------------------------------------------------------------------------------------------
# Weightings
# -------------------------------------------------------------------------------------------------


class _Ctx(NamedTuple):
    """Per-sample quantities a weighting may need (all [n])."""

    t: Array
    lam: Array
    neg_dlam: Array  # -d lambda/dt > 0
    log_p: Callable[[], Array]  # log p(t), computed only if asked for
    alpha: Array
    sigma: Array
    d_alpha: Array
    d_sigma: Array


def _c_kind(kind: str, c: _Ctx) -> Array:
    """|c_K| with ||K_hat - K|| = |c_K| ||eps_hat - eps|| at this time (module docstring)."""
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
    """weight(ctx, **kw) -> W [n] multiplying mean_d (eps_hat - eps)^2 (see module docstring), or
    (kind, W_kind) meaning W = W_kind * c_kind^2 (so W_kind multiplies the `kind` MSE directly)."""

    weight: Callable
    defaults: dict


def _importance(w_of_lam):
    def weight(c, **kw):
        return 0.5 * w_of_lam(c.lam, **kw) * c.neg_dlam * jnp.exp(-c.log_p())

    return weight


def _mse(kind, w_kind=None):
    def weight(c, **kw):
        return kind, (jnp.ones_like(c.t) if w_kind is None else w_kind(c, **kw))

    return weight


WEIGHTINGS: dict[str, Weighting] = {
    "elbo": Weighting(_importance(lambda lam: jnp.ones_like(lam)), {}),
    "sigmoid": Weighting(_importance(lambda lam, b: jax.nn.sigmoid(b - lam)), {"b": 0.0}),
    "eps_mse": Weighting(_mse("eps"), {}),
    "x0_mse": Weighting(_mse("x0"), {}),
    "v_mse": Weighting(_mse("v"), {}),
    "fm": Weighting(_mse("velocity"), {}),
    "snr": Weighting(_mse("x0", lambda c: jnp.exp(c.lam)), {}),
    "min_snr": Weighting(_mse("x0", lambda c, gamma: jnp.minimum(jnp.exp(c.lam), gamma)), {"gamma": 5.0}),
    "truncated_snr": Weighting(_mse("x0", lambda c: jnp.maximum(jnp.exp(c.lam), 1.0)), {}),
    # lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 with sigma^2 = e^-lambda
    "edm": Weighting(
        _mse("x0", lambda c, sigma_data: (jnp.exp(-c.lam) + sigma_data**2) * jnp.exp(c.lam) / sigma_data**2),
        {"sigma_data": None},
    ),
}


def _ctx(obj: Objective, t: Array) -> _Ctx:
    sch = obj.schedule
    co = sch(t)
    lam = sch.logsnr(t)
    return _Ctx(t, lam, -sch.d_logsnr(t), lambda: time_log_density(obj, t), *co)


def loss_weight(obj: Objective, t: Array, kind: str | None = None) -> Array:
    """The per-sample multiplier [n] of mean_d (K_hat - K)^2 for output kind K (default: the
    objective's prediction kind; 'eps' gives W(t) of the module docstring)."""
    kind = obj.prediction if kind is None else P.check_kind(kind)
    c = _ctx(obj, t)
    out = WEIGHTINGS[obj.weighting].weight(c, **obj.wkw)
    if isinstance(out, tuple):
        wkind, w = out
        if wkind == kind:
            return w
        return w * (_c_kind(wkind, c) / _c_kind(kind, c)) ** 2
    return out / _c_kind(kind, c) ** 2


def kingma_gao_weight(obj: Objective, t: Array) -> Array:
    """The Kingma & Gao weighting w(lambda_t) [n] this objective implies (with its time density):
    w = 2 W(t) p(t) / (-d lambda/dt)."""
    c = _ctx(obj, t)
    return 2.0 * loss_weight(obj, t, "eps") * jnp.exp(c.log_p()) / c.neg_dlam


# -------------------------------------------------------------------------------------------------
# Couplings
# -------------------------------------------------------------------------------------------------


class Coupling(NamedTuple):
    defaults: dict
    needs_noise: bool


COUPLINGS: dict[str, Coupling] = {
    "independent": Coupling({}, False),
    "ot_sinkhorn": Coupling({"epsilon": 0.05, "pairing": "sample", "max_iterations": 200}, False),
    "ot_exact": Coupling({}, True),
    "reflow": Coupling({}, True),
}


def sinkhorn_plan(x: Array, y: Array, epsilon: float = 0.05, max_iterations: int = 200) -> Array:
    """Entropic OT plan [B, B] between the uniform empirical measures on x [B, ...] and y [B, ...]
    with squared Euclidean cost (Cuturi 2013), epsilon relative to the mean cost; ott-jax, in-graph."""
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    xf = jax.lax.stop_gradient(x.reshape(x.shape[0], -1))
    yf = jax.lax.stop_gradient(y.reshape(y.shape[0], -1))
    geom = pointcloud.PointCloud(xf, yf, epsilon=epsilon, relative_epsilon="mean")
    solver = sinkhorn.Sinkhorn(max_iterations=max_iterations, implicit_diff=None)
    out = solver(linear_problem.LinearProblem(geom))
    return out.matrix


def sinkhorn_pairing(
    key: Array, x: Array, y: Array, epsilon: float = 0.05, pairing: str = "sample", max_iterations: int = 200
) -> Array:
    """Indices j [B]: data row i is paired with y[j[i]], drawn from row i of the Sinkhorn plan
    (`pairing='sample'`, Tong et al. 2024 Alg. 3) or its argmax."""
    return pair_from_plan(key, sinkhorn_plan(x, y, epsilon, max_iterations), pairing)


def pair_from_plan(key: Array, plan: Array, pairing: str = "sample") -> Array:
    """Indices j [B] from a coupling plan [B, B]: j[i] ~ plan[i, :] (normalised) or its argmax."""
    if pairing not in ("sample", "argmax"):
        raise ValueError(f"pairing={pairing!r} unknown; valid: ['argmax', 'sample']")
    logits = jnp.log(jnp.maximum(plan, jnp.finfo(plan.dtype).tiny))
    if pairing == "argmax":
        return jnp.argmax(logits, axis=1)
    return jax.random.categorical(key, logits, axis=1)


def exact_ot_pairing(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Exact minibatch OT between uniform empirical measures of equal size (numpy, on the host).

    Returns perm [B] such that (x0[i], x1[perm[i]]) are the optimal pairs for the squared Euclidean
    cost: with equal uniform weights the OT plan is a permutation (Birkhoff-von Neumann), found by
    POT's network simplex (`ot.emd`; Bonneel et al. 2011), whose optimal basic solution is
    a vertex of the Birkhoff polytope, i.e. a permutation. It is 2-4x faster than scipy's
    Jonker-Volgenant `linear_sum_assignment` on clustered data (measured in
    `benchmarks/ot_coupling.py`); scipy remains the fallback should the plan not be a permutation.
    Call it in the input pipeline (e.g. on a noise batch drawn there) so it overlaps with the device step.
    """
    import ot

    a = np.asarray(x0, np.float64).reshape(len(x0), -1)
    b = np.asarray(x1, np.float64).reshape(len(x1), -1)
    if a.shape != b.shape:
        raise ValueError(f"exact_ot_pairing needs equal shapes, got {a.shape} and {b.shape}")
    n = len(a)
    cost = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
    w = np.full(n, 1.0 / n)
    plan = ot.emd(w, w, cost, numItermax=max(100_000, 50 * n * n))
    perm = np.argmax(plan, axis=1)
    if len(np.unique(perm)) == n and np.allclose(plan[np.arange(n), perm], 1.0 / n):
        return perm.astype(np.int64)
    from scipy.optimize import linear_sum_assignment  # degenerate plan (ties split): exact fallback

    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(n, np.int64)
    perm[rows] = cols
    return perm


def pair_batch_exact_ot(batch: dict, rng: np.random.Generator) -> dict:
    """Input-pipeline helper for coupling 'ot_exact': draw standard normal noise for batch['x'] on
    the host (unless batch has 'noise') and reorder it by `exact_ot_pairing`. Returns a new dict."""
    x = np.asarray(batch["x"])
    noise = np.asarray(batch["noise"]) if "noise" in batch else rng.standard_normal(x.shape).astype(x.dtype)
    out = dict(batch)
    out["noise"] = noise[exact_ot_pairing(x, noise)]
    return out


# -------------------------------------------------------------------------------------------------
# Denoiser and loss construction
# -------------------------------------------------------------------------------------------------


def make_denoiser_from_config(obj_cfg, net_fn: P.NetFn, params=None) -> P.Denoiser:
    """The `predictions.Denoiser` (schedule, output kind, preconditioning) the objective trains, so
    that sampling uses the identical preconditioning. `obj_cfg` is a ConfigDict or an `Objective`."""
    obj = obj_cfg if isinstance(obj_cfg, Objective) else resolve_objective(obj_cfg)
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


def _cond_from_batch(batch: dict, obj: Objective, key: Array, null_label: int | None):
    """The network's conditioning, with classifier-free guidance dropout (Ho & Salimans 2022) at rate
    `label_dropout`: labels become the null label, and a caption's / embedding sequence's mask is
    emptied (a dropped example has no context at all, which the cross-attention treats as exactly
    unconditional). Labels and text draw independent decisions."""
    cond = {k: batch[k] for k in COND_KEYS if k in batch}
    if "context" in cond and "context_mask" not in cond:
        cond["context_mask"] = jnp.ones(cond["context"].shape[:2], bool)
    if "tokens" in cond and "tokens_mask" not in cond:
        raise ValueError("batch has 'tokens' but no 'tokens_mask'")
    if obj.label_dropout > 0:
        k_text = jax.random.fold_in(key, 1)
        if "label" in cond:
            if null_label is None:
                raise ValueError("the batch has labels but make_loss got num_classes=0 (no null label)")
            drop = jax.random.bernoulli(key, obj.label_dropout, cond["label"].shape)
            cond["label"] = jnp.where(drop, jnp.asarray(null_label, cond["label"].dtype), cond["label"])
        for m in ("context_mask", "tokens_mask"):
            if m in cond:
                cond[m] = drop_context(k_text, jnp.asarray(cond[m], bool), obj.label_dropout)
    return cond or None


def make_loss(obj_cfg, net_fn: P.NetFn, *, num_classes: int | None = None):
    """Build `loss_fn(params, batch, key) -> (scalar, metrics)` and the matching `Denoiser`.

    Args:
      obj_cfg: objective ConfigDict (schema: `default_objective_config`), validated here.
      net_fn: `net_fn(params, z_in, t_in, cond, rng) -> out` (`predictions.NetFn`).
      num_classes: resolves null_label=-1 (the null label is then `num_classes`); needed only when
        label_dropout > 0 and null_label == -1. 0: no class labels (text-conditioned models), so the
        dropout only empties caption / context masks.
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
    denoiser = make_denoiser_from_config(obj, net_fn)
    sch = obj.schedule
    coupling = COUPLINGS[obj.coupling]

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
                "(ot_exact: pair it in the input pipeline with `pair_batch_exact_ot`)"
            )
        else:
            eps = jax.random.normal(k_eps, x.shape, x.dtype)
        if obj.coupling == "ot_sinkhorn":
            ckw = obj.ckw
            idx = sinkhorn_pairing(k_pair, x, eps, ckw["epsilon"], ckw["pairing"], int(ckw["max_iterations"]))
            eps = eps[idx]
        t = sample_time(obj, k_t, b, x.dtype)
        a, s = P.bcast(sch.alpha(t), x), P.bcast(sch.sigma(t), x)
        z = a * x + s * eps
        cond = _cond_from_batch(batch, obj, k_drop, null)
        out = denoiser.replace(params=params, cond=cond).raw(z, t, k_net)
        tgt = P.target(obj.prediction, x, eps, t, sch)
        axes = tuple(range(1, x.ndim))
        mse = jnp.mean((out - tgt) ** 2, axis=axes)
        w = jax.lax.stop_gradient(loss_weight(obj, t))
        loss = jnp.mean(w * mse)
        eps_hat = P.to_x0_eps(out, obj.prediction, z, t, sch)[1]
        metrics = {
            "loss": loss,
            "mse": jnp.mean(mse),
            "eps_mse": jnp.mean((jax.lax.stop_gradient(eps_hat) - eps) ** 2),
            "weight_mean": jnp.mean(w),
            "t_mean": jnp.mean(t),
        }
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
    # OT-CFM (Tong et al. 2024): rectified flow with minibatch OT pairs (in-graph Sinkhorn; use
    # coupling='ot_exact' with `pair_batch_exact_ot` in the pipeline for the exact plan).
    "ot_cfm": lambda: _preset(
        schedule="rectified_flow",
        prediction="velocity",
        weighting="fm",
        time_distribution="uniform",
        coupling="ot_sinkhorn",
        coupling_kwargs={"epsilon": 0.05},
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
    "make_loss",
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
