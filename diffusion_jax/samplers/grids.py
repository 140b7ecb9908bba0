"""Time grids: the descending times t_0 > t_1 > ... > t_N a sampler steps through.

Every grid is a function of (num_steps N, schedule, endpoints) that returns N+1 times, from
`t_max` (noise) down to `t_min` (near data). Grids are computed eagerly and handed to a sampler as
an *array* (not a static argument), so changing the grid never recompiles the sampler.

Endpoints, explicitly:
  * `t_max`, `t_min` default to the schedule's (`schedule.t_max`, `schedule.t_min`) and are hit
    exactly (the first and last entries are set to them, not recomputed through logSNR round trips).
  * `final_zero=True` appends t = 0 as an *extra* last point: the grid then has N+2 times and the
    sampler takes N+1 steps. On schedules with sigma(0) = 0 (all but VE) that last step lands on clean
    data (logSNR = +inf); each sampler documents what it does there and its NFE, e.g. EDM Heun takes
    an Euler step (NFE 2(N+1) - 1 = 2N+1), DPM-Solver / DPM-Solver++ / UniPC take the first-order
    data-prediction limit z = alpha(0) x0-hat (1 NFE).

Grids ('name': definition):
  * 'uniform':   uniform in t.
  * 'karras':    uniform in sigma~^(1/rho) with sigma~ = sigma/alpha (Karras et al. 2022, "Elucidating
                 the Design Space", eq. 5; rho=7), mapped to t by t = schedule.t_from_logsnr(-2 log sigma~).
  * 'edm':       'karras' with EDM's defaults: rho=7 and sigma~ in [0.002, 80] (Karras et al. 2022,
                 Table 1), intersected with the schedule's [t_min, t_max] unless endpoints are given.
  * 'logsnr':    uniform in logSNR (the "logSNR" / time-uniform-lambda grid of Lu et al. 2022,
                 "DPM-Solver", sec. 3.3).
  * 'quadratic': quadratic in t, t_i = (sqrt(t_max) + i/N (sqrt(t_min) - sqrt(t_max)))^2: DDIM's
                 "quadratic" skip (Song et al. 2021, "DDIM", appendix D.2) as continued to
                 continuous time by Lu et al. 2022 ("time_quadratic").
  * 'shifted':   uniform in t, then the SD3 shift warp t -> s t / (1 + (s - 1) t) (Esser et al. 2024,
                 "Scaling Rectified Flow Transformers", eq. 23; kw `shift`, default 3.0); the uniform
                 part runs between the unwarped endpoints so the warped grid hits t_max, t_min.
  * 'linspace', 'leading', 'trailing': the timestep spacings of 1000-step discrete models (Lin et al.
                 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2), with
                 S = N+1 timesteps n in {1..T} (T = schedule.num_steps, default 1000) returned as
                 times t = n / T (the `VPDiscrete` embedding):
                   linspace: n_k = round(T - k (T-1)/(S-1))     e.g. T=1000, S=10: 1000, 889, ..., 1
                   leading:  n_k = 1 + (S-1-k) floor(T/S)        e.g. 901, 801, ..., 1
                   trailing: n_k = round(T - k T/S)              e.g. 1000, 900, ..., 100
                   simple:   n_k = T - floor(k T/S)         (ComfyUI's "simple")
                 Their endpoints are fixed by the spacing (t_min / t_max are rejected). The paper's
                 "S-step" sampler that ends on clean data is make_grid(name, S-1, ..., final_zero=True):
                 S timesteps plus t = 0, S steps.
  * 'polyexponential': log sigma~ = log s_min + (1 - u)^rho (log s_max - log s_min) (k-diffusion's
                 polyexponential; rho = 1 is 'logsnr').
  * 'sgm_uniform': uniform in t, N+1 of N+2 points (the last dropped; with final_zero the last step
                 goes to 0), ComfyUI's name for the score-SDE samplers' grid.
  * 'beta':      t at the quantiles of Beta(alpha, beta), default 0.6 / 0.6 (Lee et al. 2024, "Beta
                 Sampling is All You Need").
  * 'ays':       Align Your Steps (Sabour et al. 2024, Table 3): the published 10-step sigma~ tables for
                 SD 1.5 / SDXL / SVD (`model`), log-linearly interpolated to N steps, mapped to t through
                 the schedule's logSNR; endpoints fixed by the table.
Grids added at run time: `register_grid(name, fn)` (explicit calls only).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from diffusion_jax import extensions
from diffusion_jax.schedules import Schedule

# EDM's recommended sampling range and rho (Karras et al. 2022, Table 1 / sec. 3).
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0
EDM_RHO = 7.0


def _dtype():
    # float64 when jax_enable_x64 is on, float32 otherwise.
    return jnp.result_type(float)


def _sigma_tilde(schedule: Schedule, t) -> np.ndarray:
    t = jnp.asarray(t, _dtype())
    return np.asarray(schedule.sigma(t) / schedule.alpha(t), np.float64)


def _t_from_sigma_tilde(schedule: Schedule, s: np.ndarray) -> np.ndarray:
    lam = -2.0 * np.log(s)
    return np.array(schedule.t_from_logsnr(jnp.asarray(lam, _dtype())), np.float64)


def _uniform(n, sched, t_min, t_max, **kw):
    return np.linspace(t_max, t_min, n + 1)


def _karras(n, sched, t_min, t_max, rho=EDM_RHO, **kw):
    s_max, s_min = _sigma_tilde(sched, t_max), _sigma_tilde(sched, t_min)
    if not (np.isfinite(s_max) and s_max > 0 and s_min > 0):
        raise ValueError(
            f"grid 'karras': sigma/alpha must be finite and > 0 at both endpoints, got sigma~(t_max={t_max})"
            f"={s_max}, sigma~(t_min={t_min})={s_min}; pass t_min > 0 / t_max < the schedule's pure-noise end"
        )
    u = np.linspace(0.0, 1.0, n + 1)
    s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    t = _t_from_sigma_tilde(sched, s)
    t[0], t[-1] = t_max, t_min
    return t


def _logsnr(n, sched, t_min, t_max, **kw):
    lo = float(sched.logsnr(jnp.asarray(t_max, _dtype())))
    hi = float(sched.logsnr(jnp.asarray(t_min, _dtype())))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(
            f"grid 'logsnr': logSNR must be finite at both endpoints, got logsnr(t_max={t_max})={lo}, "
            f"logsnr(t_min={t_min})={hi}"
        )
    lam = np.linspace(lo, hi, n + 1)
    t = np.array(sched.t_from_logsnr(jnp.asarray(lam, _dtype())), np.float64)
    t[0], t[-1] = t_max, t_min
    return t


def _quadratic(n, sched, t_min, t_max, **kw):
    t = np.linspace(math.sqrt(t_max), math.sqrt(t_min), n + 1) ** 2
    t[0], t[-1] = t_max, t_min
    return t


def _shifted(n, sched, t_min, t_max, shift=3.0, **kw):
    if shift <= 0:
        raise ValueError(f"grid 'shifted': `shift` must be > 0, got {shift}")

    def unwarp(u):
        return u / (shift - (shift - 1.0) * u)

    u = np.linspace(unwarp(t_max), unwarp(t_min), n + 1)
    t = shift * u / (1.0 + (shift - 1.0) * u)
    t[0], t[-1] = t_max, t_min
    return t


def _train_steps(sched, num_train_steps):
    if num_train_steps is not None:
        return int(num_train_steps)
    return int(getattr(sched, "num_steps", 1000))


def _check_spacing(name, n, T):
    S = n + 1
    if S > T:
        raise ValueError(f"grid {name!r}: {S} timesteps (num_steps + 1) exceed the {T} training steps")
    return S


def _linspace(n, sched, t_min, t_max, num_train_steps=None, **kw):
    T = _train_steps(sched, num_train_steps)
    S = _check_spacing("linspace", n, T)
    steps = np.round(np.linspace(1.0, T, S))[::-1]
    return steps / T


def _leading(n, sched, t_min, t_max, num_train_steps=None, **kw):
    T = _train_steps(sched, num_train_steps)
    S = _check_spacing("leading", n, T)
    steps = 1.0 + np.arange(S)[::-1] * (T // S)
    return steps / T


def _simple(n, sched, t_min, t_max, num_train_steps=None, **kw):
    """ComfyUI's 'simple' schedule: every (T / S)-th of the T training timesteps from the top,
    n_k = T - floor(k T / S), k = 0..S-1 (S = N+1 timesteps), as times n / T."""
    T = _train_steps(sched, num_train_steps)
    S = _check_spacing("simple", n, T)
    return (T - np.floor(np.arange(S) * (T / S))) / T


def _trailing(n, sched, t_min, t_max, num_train_steps=None, **kw):
    T = _train_steps(sched, num_train_steps)
    S = _check_spacing("trailing", n, T)
    steps = np.round(T - np.arange(S) * (T / S))
    return steps / T


def _polyexponential(n, sched, t_min, t_max, rho=1.0, **kw):
    """k-diffusion's `get_sigmas_polyexponential`: log sigma~ = log s_min + (1 - u)^rho (log s_max -
    log s_min), u uniform in [0, 1]; rho = 1 is uniform in log sigma~ (= 'logsnr')."""
    if rho <= 0:
        raise ValueError(f"grid 'polyexponential': `rho` must be > 0, got {rho}")
    s_max, s_min = _sigma_tilde(sched, t_max), _sigma_tilde(sched, t_min)
    _check_sigma_range("polyexponential", s_max, s_min, t_max, t_min)
    ramp = np.linspace(1.0, 0.0, n + 1) ** rho
    t = _t_from_sigma_tilde(sched, np.exp(np.log(s_min) + ramp * (np.log(s_max) - np.log(s_min))))
    t[0], t[-1] = t_max, t_min
    return t


def _check_sigma_range(name, s_max, s_min, t_max, t_min):
    if not (np.isfinite(s_max) and s_max > 0 and s_min > 0):
        raise ValueError(
            f"grid {name!r}: sigma/alpha must be finite and > 0 at both endpoints, got sigma~(t_max={t_max})"
            f"={s_max}, sigma~(t_min={t_min})={s_min}; pass t_min > 0 / t_max < the schedule's pure-noise end "
            "(e.g. t_max=0.999)"
        )


def _sgm_uniform(n, sched, t_min, t_max, **kw):
    """Uniform in t over N+1 of N+2 equally spaced times from t_max to t_min: the last one is dropped,
    as in the score-SDE (SGM) samplers' time grid (Song et al. 2021) that ComfyUI calls 'sgm_uniform';
    with final_zero=True the last step then goes to t = 0."""
    return np.linspace(t_max, t_min, n + 2)[:-1]


def _beta(n, sched, t_min, t_max, alpha=0.6, beta=0.6, **kw):
    """Times at the quantiles of a Beta(alpha, beta) law (Lee et al. 2024, "Beta Sampling is All You
    Need", sec. 4; alpha = beta = 0.6 in their experiments): t_k = t_min + (t_max - t_min)
    F^{-1}(1 - k/N), which concentrates steps at both ends of the trajectory."""
    from scipy import stats

    if alpha <= 0 or beta <= 0:
        raise ValueError(f"grid 'beta': `alpha` and `beta` must be > 0, got {alpha}, {beta}")
    q = stats.beta.ppf(1.0 - np.arange(n + 1) / n, alpha, beta)
    t = t_min + (t_max - t_min) * q
    t[0], t[-1] = t_max, t_min
    return t


# Align Your Steps (Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling Schedules in
# Diffusion Models", Table 3; also https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html):
# optimised 10-step noise levels sigma~(t_10) > ... > sigma~(t_0), in the EDM / k-diffusion sigma units.
AYS_SIGMAS = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}


def ays_sigmas(model: str, num_steps: int) -> np.ndarray:
    """[N+1] AYS noise levels for N steps: the published 10-step table, interpolated linearly in
    log sigma~ over an equally spaced index (the authors' recipe for other step counts)."""
    if model not in AYS_SIGMAS:
        raise ValueError(f"grid 'ays': unknown `model` {model!r}; valid: {sorted(AYS_SIGMAS)}")
    table = np.log(np.asarray(AYS_SIGMAS[model], np.float64))
    xs = np.linspace(0.0, 1.0, table.shape[0])
    return np.exp(np.interp(np.linspace(0.0, 1.0, num_steps + 1), xs, table))


def _ays(n, sched, t_min, t_max, model="sd15", **kw):
    s = ays_sigmas(model, n)
    t = _t_from_sigma_tilde(sched, s)
    if not (np.all(np.isfinite(t)) and t[0] <= 1.0 + 1e-9 and t[-1] >= 0.0):
        raise ValueError(
            f"grid 'ays': the {model!r} table's sigma~ range [{s[-1]}, {s[0]}] is outside what "
            f"{sched.name} reaches on t in [0, 1]; use a schedule that reaches it or another grid"
        )
    return np.clip(t, 0.0, 1.0)


GridFn = Callable[..., np.ndarray]

GRIDS: dict[str, GridFn] = {
    "uniform": _uniform,
    "karras": _karras,
    "edm": _karras,
    "logsnr": _logsnr,
    "quadratic": _quadratic,
    "shifted": _shifted,
    "linspace": _linspace,
    "leading": _leading,
    "trailing": _trailing,
    "polyexponential": _polyexponential,
    "sgm_uniform": _sgm_uniform,
    "simple": _simple,
    "beta": _beta,
    "ays": _ays,
}

_SPACINGS = ("linspace", "leading", "trailing", "simple")
_FIXED_ENDPOINTS = (*_SPACINGS, "ays")
# Extra keyword arguments each grid accepts (validated so a typo fails loudly).
_GRID_KWARGS = {
    "karras": ("rho",),
    "edm": ("rho",),
    "shifted": ("shift",),
    "linspace": ("num_train_steps",),
    "leading": ("num_train_steps",),
    "trailing": ("num_train_steps",),
    "simple": ("num_train_steps",),
    "polyexponential": ("rho",),
    "beta": ("alpha", "beta"),
    "ays": ("model",),
}


# Grids added at run time by `register_grid` (explicit calls only; nothing registers on import).
_USER_GRIDS: dict[str, GridFn] = {}
_USER_GRID_KWARGS: dict[str, tuple[str, ...]] = {}


def _grid_table() -> dict[str, GridFn]:
    return {**GRIDS, **_USER_GRIDS}


def list_grids() -> list[str]:
    """Names accepted by `make_grid` (built-in and registered)."""
    return sorted(_grid_table())


def _grid_options(fn: GridFn) -> tuple[str, ...]:
    """Keyword options of a grid function: its parameters after (n, schedule, t_min, t_max)."""
    params = list(inspect.signature(fn).parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params[4:] if p.kind in kinds)


def register_grid(name: str, fn: GridFn, *, overwrite: bool = False) -> None:
    """Make `make_grid(name, ...)` use `fn` (an explicit call; nothing in the package calls it).

    `fn(num_steps, schedule, t_min, t_max, **options) -> [num_steps + 1]` descending times from t_max to
    t_min (float arrays; `make_grid` checks they descend and handles `final_zero`). Its keyword
    parameters after the first four are the options `make_grid` accepts for it; others are refused.
    Raises ValueError if `name` is taken (built-in names always; registered ones unless `overwrite`).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_grid: `name` must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise ValueError(f"register_grid: `fn` must be callable, got {type(fn).__name__}")
    if len(inspect.signature(fn).parameters) < 4 and not any(
        p.kind == inspect.Parameter.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values()
    ):
        raise ValueError(f"register_grid: {name!r} must take (num_steps, schedule, t_min, t_max, **options)")
    if name in GRIDS or (name in _USER_GRIDS and not overwrite):
        raise ValueError(f"register_grid: grid {name!r} already exists; registered grids: {list_grids()}")
    _USER_GRIDS[name] = fn
    _USER_GRID_KWARGS[name] = _grid_options(fn)


def unregister_grid(name: str) -> None:
    """Remove a grid added by `register_grid` (tests; built-in grids cannot be removed)."""
    if name not in _USER_GRIDS:
        raise ValueError(
            f"unregister_grid: {name!r} is not a registered grid; registered: {sorted(_USER_GRIDS)}"
        )
    del _USER_GRIDS[name], _USER_GRID_KWARGS[name]


def make_grid(
    name: str,
    num_steps: int,
    schedule: Schedule,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    final_zero: bool = False,
    **kw,
):
    """A descending time grid of `num_steps` steps (see the module docstring for every grid).

    Args:
      name: one of `list_grids()`.
      num_steps: N >= 1, number of steps between t_max and t_min.
      schedule: the schedule the grid is built for (karras / edm / logsnr use its logSNR map).
      t_min, t_max: endpoints (default: the schedule's; 'edm' defaults to EDM's sigma range clipped to
        the schedule's). Not allowed for the discrete spacings, whose endpoints are fixed.
      final_zero: append t = 0 as an extra last point (N+1 steps in total; see the module docstring for
        the NFE consequences).
      **kw: grid options: `rho` (karras, edm; default 7), `shift` (shifted; default 3.0),
        `num_train_steps` (linspace, leading, trailing; default schedule.num_steps or 1000).

    Returns: [N+1] (or [N+2] with final_zero) strictly descending times, float64 under x64 (else
      float32), as a concrete jax array.
    """
    table, options = _grid_table(), {**_GRID_KWARGS, **_USER_GRID_KWARGS}
    if extensions.is_dotted(name):  # a 'package.module:function' outside the package
        table[name] = extensions.import_object(name)
        options[name] = _grid_options(table[name])
    if name not in table:
        raise ValueError(f"unknown grid {name!r}; valid grids: {list_grids()}")
    if not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise ValueError(f"make_grid: `num_steps` must be an integer >= 1, got {num_steps!r}")
    allowed = options.get(name, ())
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"grid {name!r} got unknown option(s) {unknown}; valid options: {list(allowed)}")
    if name in _FIXED_ENDPOINTS:
        if t_min is not None or t_max is not None:
            what = "the published table" if name == "ays" else "the discrete spacing (times n / T)"
            raise ValueError(
                f"grid {name!r}: t_min / t_max are fixed by {what}; use 'uniform' or another continuous "
                "grid to choose endpoints"
            )
        t = GRIDS[name](int(num_steps), schedule, None, None, **kw)
    else:
        if name == "edm":
            kw.setdefault("rho", EDM_RHO)
            if t_max is None:
                t_edm = float(_t_from_sigma_tilde(schedule, np.asarray(EDM_SIGMA_MAX)))
                t_max = min(t_edm, schedule.t_max) if np.isfinite(t_edm) else schedule.t_max
            if t_min is None:
                t_edm = float(_t_from_sigma_tilde(schedule, np.asarray(EDM_SIGMA_MIN)))
                t_min = max(t_edm, schedule.t_min) if np.isfinite(t_edm) else schedule.t_min
        t_min = schedule.t_min if t_min is None else float(t_min)
        t_max = schedule.t_max if t_max is None else float(t_max)
        if not (0.0 <= t_min < t_max <= 1.0):
            raise ValueError(f"make_grid: need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        t = table[name](int(num_steps), schedule, t_min, t_max, **kw)
    t = np.asarray(t, np.float64)
    if final_zero:
        if t[-1] <= 0.0:
            raise ValueError(f"grid {name!r}: final_zero=True but the grid already ends at t={t[-1]}")
        t = np.concatenate([t, [0.0]])
    if not np.all(np.diff(t) < 0):
        raise ValueError(
            f"grid {name!r} with num_steps={num_steps} is not strictly descending (too many steps for the "
            f"endpoint range or the float precision): {t}"
        )
    return jnp.asarray(t, _dtype())


__all__ = [
    "GRIDS",
    "list_grids",
    "make_grid",
    "register_grid",
    "unregister_grid",
    "EDM_RHO",
    "EDM_SIGMA_MAX",
    "EDM_SIGMA_MIN",
]
