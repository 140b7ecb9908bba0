"""The listing of samplers and time grids: explicit name -> class / function dicts, no import-time
registration. The stochastic samplers (`stochastic.py`) are imported when first asked for, so this
module stays importable on its own.

    list_samplers() -> ['ddim', 'dopri5', 'dpm_solver', ...]
    get_sampler('dpmpp_2m', lower_order_final='never') -> DPMSolverPP2M(...)
    list_grids()    -> ['edm', 'karras', ...]
    register_sampler('my_lms', MyLMS)   /   register_grid('my_grid', fn)   (explicit calls, from
                                         user code or a config's `imports`; never on import here)
    sampler_info()  -> {name: {'family', 'stochastic', 'doc'}}  (for the sampling CLI's listing)
"""

from __future__ import annotations

import dataclasses

from diffusion_jax import extensions
from diffusion_jax.samplers import (
    adaptive,
    ancestral,
    deterministic,
    interpolant_sde,
    lms,
    multistep,
    names,
    restart,
    stochastic,
)
from diffusion_jax.samplers.base import Sampler
from diffusion_jax.samplers.grids import GRIDS, list_grids, make_grid, register_grid, unregister_grid

DETERMINISTIC: dict[str, type[Sampler]] = {
    "euler": deterministic.Euler,
    "heun": deterministic.Heun,
    "midpoint": deterministic.Midpoint,
    "rk4": deterministic.RK4,
    "ddim": deterministic.DDIM,
    "dpm_solver": deterministic.DPMSolver,
    "dpm_solver_1": deterministic.DPMSolver1,
    "dpm_solver_2": deterministic.DPMSolver2,
    "dpm_solver_3": deterministic.DPMSolver3,
}

MULTISTEP: dict[str, type[Sampler]] = {
    "dpmpp_2s": multistep.DPMSolverPP2S,
    "dpmpp_multistep": multistep.DPMSolverPPMultistep,
    "dpmpp_2m": multistep.DPMSolverPP2M,
    "dpmpp_3m": multistep.DPMSolverPP3M,
    "unipc": multistep.UniPC,
    "unipc_bh1": multistep.UniPCBH1,
    "unipc_bh2": multistep.UniPCBH2,
    "ipndm": multistep.IPNDM,
    "ipndm_v": lms.IPNDMV,
    "lms": lms.LMS,
}

ADAPTIVE: dict[str, type[Sampler]] = {
    "dopri5": adaptive.Dopri5,
    "tsit5": adaptive.Tsit5,
}


def _stochastic() -> dict[str, type[Sampler]]:
    return {
        **stochastic.SAMPLERS,
        "dpmpp_2s_ancestral": ancestral.DPMpp2SAncestral,
        "dpmpp_sde": ancestral.DPMppSDE,
        "restart": restart.Restart,
        "interpolant_em": interpolant_sde.InterpolantEM,
    }


# Samplers added at run time by `register_sampler`: name -> (class, family). Explicit calls only.
_USER_SAMPLERS: dict[str, tuple[type[Sampler], str]] = {}

FAMILIES = ("deterministic", "multistep", "adaptive", "stochastic")


def _builtin() -> dict[str, type[Sampler]]:
    return {**DETERMINISTIC, **MULTISTEP, **ADAPTIVE, **_stochastic()}


def _all() -> dict[str, type[Sampler]]:
    return {**_builtin(), **{n: cls for n, (cls, _) in _USER_SAMPLERS.items()}}


def _family(name: str) -> str:
    if name in _USER_SAMPLERS:
        return _USER_SAMPLERS[name][1]
    for fam, table in (("deterministic", DETERMINISTIC), ("multistep", MULTISTEP), ("adaptive", ADAPTIVE)):
        if name in table:
            return fam
    return "stochastic"


def register_sampler(
    name: str, cls: type[Sampler], *, family: str | None = None, overwrite: bool = False
) -> None:
    """Make `get_sampler(name, **options)` build `cls` (an explicit call; the package never calls it).

    Args:
      name: the name users type (must not be a built-in sampler's).
      cls: a frozen-dataclass subclass of `base.Sampler`; its dataclass fields are the options.
      family: one of FAMILIES for listings; default "stochastic" if `cls.stochastic`, else
        "deterministic".
      overwrite: replace an earlier `register_sampler` of the same name.
    Raises ValueError (name taken, not a Sampler subclass, unknown family).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_sampler: `name` must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Sampler) and dataclasses.is_dataclass(cls)):
        raise ValueError(
            f"register_sampler: {name!r} must be a dataclass subclass of samplers.base.Sampler, got {cls!r}"
        )
    if family is None:
        family = "stochastic" if cls.stochastic else "deterministic"
    if family not in FAMILIES:
        raise ValueError(f"register_sampler: unknown family {family!r}; valid families: {list(FAMILIES)}")
    if name in _builtin() or (name in _USER_SAMPLERS and not overwrite):
        raise ValueError(
            f"register_sampler: sampler {name!r} already exists; valid samplers: {sorted(_all())}"
        )
    _USER_SAMPLERS[name] = (cls, family)


def unregister_sampler(name: str) -> None:
    """Remove a sampler added by `register_sampler` (tests; built-in samplers cannot be removed)."""
    if name not in _USER_SAMPLERS:
        raise ValueError(
            f"unregister_sampler: {name!r} is not a registered sampler; registered: {sorted(_USER_SAMPLERS)}"
        )
    del _USER_SAMPLERS[name]


def list_samplers(family: str | None = None) -> list[str]:
    """Sorted sampler names, optionally of one family ('deterministic', 'multistep', 'adaptive',
    'stochastic')."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown sampler family {family!r}; valid families: {list(FAMILIES)}")
    names = sorted(_all())
    return names if family is None else [n for n in names if _family(n) == family]


def resolve_alias(name: str) -> tuple[str, str | None]:
    """(sampler name, grid name or None) for any name users type: a registry name, an alias from
    other tools ("euler_a", "k_lms", "DPM++ 2S a") or a sampler + grid combination ("dpmpp_2m_karras",
    "DPM++ 2M Karras" -> ("dpmpp_2m", "karras")). ValueError listing the valid names otherwise."""
    return names.resolve(name, _all(), list_grids())


def sampler_class(name: str) -> type[Sampler]:
    """The class registered under `name` (or an alias, see `resolve_alias`); ValueError listing the
    valid names otherwise). A 'package.module:Class' reference names a sampler outside the package."""
    if extensions.is_dotted(name):
        return extensions.lookup({}, "sampler", name, expect=Sampler)
    return _all()[resolve_alias(name)[0]]


def get_sampler(name: str, **kwargs) -> Sampler:
    """Build the sampler `name` with its hyperparameters, e.g. `get_sampler('unipc', order=2)`.

    `name` may be an alias (see `resolve_alias`; the grid part of a combined alias is read with
    `resolve_alias`). Raises ValueError listing the valid names, or the valid fields of the sampler.
    """
    cls = sampler_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"sampler {name!r} got unknown option(s) {unknown}; valid options: {sorted(fields)}")
    return cls(**kwargs)


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return text.split(". ")[0].rstrip(".") if text else ""


def describe_samplers() -> list[str]:
    """One whole line per sampler (built-in and registered): name, family, order, NFE rule for N
    steps and what it is. Registered classes may set `order_desc` / `nfe_desc` class attributes."""
    lines = []
    for name, cls in sorted(_all().items()):
        order, nfe, what = names.SAMPLER_FACTS.get(
            name,
            (getattr(cls, "order_desc", "?"), getattr(cls, "nfe_desc", "?"), _first_sentence(cls.__doc__)),
        )
        noise = "stochastic" if cls.stochastic else "deterministic"
        lines.append(f"{name:<20} {_family(name):<13} {noise:<13} order {order:<12} NFE {nfe:<26} {what}")
    return lines


def describe_grids() -> list[str]:
    """One whole line per grid (built-in and registered): name, options, what it is; every grid
    takes N steps (final_zero=True adds one step to t = 0)."""
    from diffusion_jax.samplers import grids as g

    opts = {**g._GRID_KWARGS, **g._USER_GRID_KWARGS}
    table = g._grid_table()
    lines = []
    for name in list_grids():
        what = names.GRID_FACTS.get(name) or _first_sentence(table[name].__doc__) or "user grid"
        options = ", ".join(opts.get(name, ())) or "-"
        lines.append(f"{name:<16} options: {options:<22} {what}")
    return lines


def sampler_info() -> dict[str, dict]:
    """{name: {'family', 'stochastic', 'options', 'doc'}}: the listing the sampling CLI prints."""
    out = {}
    for name, cls in sorted(_all().items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        out[name] = {
            "family": _family(name),
            "stochastic": bool(cls.stochastic),
            "options": {f.name: f.default for f in dataclasses.fields(cls)},
            "doc": doc[0] if doc else "",
        }
    return out


__all__ = [
    "ADAPTIVE",
    "DETERMINISTIC",
    "FAMILIES",
    "GRIDS",
    "MULTISTEP",
    "describe_grids",
    "describe_samplers",
    "get_sampler",
    "list_grids",
    "list_samplers",
    "make_grid",
    "register_grid",
    "register_sampler",
    "resolve_alias",
    "sampler_class",
    "sampler_info",
    "unregister_grid",
    "unregister_sampler",
]
