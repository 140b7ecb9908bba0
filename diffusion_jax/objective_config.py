"""The objective's config schema and its validation: `default_objective_config` (every field with
its default), `resolve_objective` (ConfigDict -> a validated, hashable `Objective`, every part looked
up by name or 'module:Name' and its kwargs completed), all before anything is traced or compiled.

The loss built from an `Objective` is in `objectives`; the named presets in `presets`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import ml_collections
import numpy as np

from diffusion_jax import couplings as C
from diffusion_jax import predictions as P
from diffusion_jax import time_distributions as TD
from diffusion_jax import weightings as WG
from diffusion_jax.interpolants import PATH_NOISES, Interpolant
from diffusion_jax.schedules import Schedule, get_schedule

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


def _resolve_parts(g, sigma_data: float, path: dict) -> dict:
    """The weighting, time distribution and coupling fields of an `Objective`: each part looked up
    (a registered name or 'module:Name'), its kwargs completed with defaults and validated."""
    weighting = g("weighting")
    w_defaults = _part(WG.get_weighting, weighting, "weighting").defaults
    wkw = _merge_kwargs(w_defaults, weighting, g("weighting_kwargs"), "weighting_kwargs")
    if "sigma_data" in wkw and wkw["sigma_data"] is None:
        wkw["sigma_data"] = sigma_data
    td = g("time_distribution")
    tdist = _part(TD.get_time_distribution, td, "time_distribution")
    tkw = _merge_kwargs(tdist.defaults, td, g("time_kwargs"), "time_kwargs")
    for k, v in list(wkw.items()) + list(tkw.items()):
        if isinstance(v, int | float) and not np.isfinite(float(v)):
            raise ValueError(f"objective: kwarg {k}={v} must be finite")
    if tdist.check is not None:
        tdist.check(tkw)
    coupling = g("coupling")
    cdefaults = _part(C.coupling_defaults, coupling, "coupling")
    ckw = _merge_kwargs(
        cdefaults, coupling, _coupling_kwargs(coupling, cdefaults, g("coupling_kwargs")), "coupling_kwargs"
    )
    if coupling == "schrodinger":
        if not (path["path_noise"] == "bridge" and path["path_sigma"] > 0.0):
            raise ValueError(
                "objective.coupling='schrodinger' (SB-CFM's entropic plan, reg 2 sigma^2) needs "
                f"path_noise='bridge' and path_sigma > 0 (got {path['path_noise']!r}, {path['path_sigma']})"
            )
        if ckw["sigma"] is None:
            ckw["sigma"] = path["path_sigma"]
    C.make_coupling(coupling, ckw)  # validates the fields
    return dict(
        weighting=weighting,
        weighting_kwargs=tuple(sorted(wkw.items())),
        time_distribution=td,
        time_kwargs=tuple(sorted(tkw.items())),
        coupling=coupling,
        coupling_kwargs=tuple(sorted(ckw.items())),
    )


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
    path = _resolve_path(g, prediction, g("weighting"))
    t_eps = float(g("t_eps"))
    if not 0.0 <= t_eps < 0.5:
        raise ValueError(f"objective.t_eps must be in [0, 0.5), got {t_eps}")
    p = float(g("label_dropout"))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"objective.label_dropout must be in [0, 1], got {p}")
    return Objective(
        schedule=schedule,
        prediction=prediction,
        preconditioning=precond,
        time_input=time_input,
        input_scaling=input_scaling,
        sigma_data=sigma_data,
        **_resolve_parts(g, sigma_data, path),
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


__all__ = [
    "PRECONDITIONINGS",
    "Objective",
    "default_objective_config",
    "resolve_objective",
    "validate_objective_config",
]
