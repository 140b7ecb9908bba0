"""The listing of samplers and time grids: explicit name -> class / function dicts, no import-time
registration. The stochastic samplers (`stochastic.py`) are imported when first asked for, so this
module stays importable on its own.

    list_samplers() -> ['ddim', 'dopri5', 'dpm_solver', ...]
    get_sampler('dpmpp_2m', lower_order_final='never') -> DPMSolverPP2M(...)
    list_grids()    -> ['edm', 'karras', ...]
    sampler_info()  -> {name: {'family', 'stochastic', 'doc'}}  (for the sampling CLI's listing)
"""

from __future__ import annotations

import dataclasses

from diffusion_jax.samplers import adaptive, deterministic, multistep
from diffusion_jax.samplers.base import Sampler
from diffusion_jax.samplers.grids import GRIDS, list_grids, make_grid

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
}

ADAPTIVE: dict[str, type[Sampler]] = {
    "dopri5": adaptive.Dopri5,
    "tsit5": adaptive.Tsit5,
}


def _stochastic() -> dict[str, type[Sampler]]:
    # Imported here, not at module level: `stochastic.py` is owned and evolved separately, and its own
    # explicit `SAMPLERS` dict is the listing of its samplers.
    from diffusion_jax.samplers import stochastic

    return dict(stochastic.SAMPLERS)


def _all() -> dict[str, type[Sampler]]:
    return {**DETERMINISTIC, **MULTISTEP, **ADAPTIVE, **_stochastic()}


def _family(name: str) -> str:
    for fam, table in (("deterministic", DETERMINISTIC), ("multistep", MULTISTEP), ("adaptive", ADAPTIVE)):
        if name in table:
            return fam
    return "stochastic"


def list_samplers(family: str | None = None) -> list[str]:
    """Sorted sampler names, optionally of one family ('deterministic', 'multistep', 'adaptive',
    'stochastic')."""
    families = ("deterministic", "multistep", "adaptive", "stochastic")
    if family is not None and family not in families:
        raise ValueError(f"unknown sampler family {family!r}; valid families: {list(families)}")
    names = sorted(_all())
    return names if family is None else [n for n in names if _family(n) == family]


def sampler_class(name: str) -> type[Sampler]:
    """The class registered under `name`; ValueError listing the valid names otherwise."""
    table = _all()
    if name not in table:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {sorted(table)}")
    return table[name]


def get_sampler(name: str, **kwargs) -> Sampler:
    """Build the sampler `name` with its hyperparameters, e.g. `get_sampler('unipc', order=2)`.

    Raises ValueError listing the valid names, or the valid fields of the chosen sampler.
    """
    cls = sampler_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"sampler {name!r} got unknown option(s) {unknown}; valid options: {sorted(fields)}")
    return cls(**kwargs)


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
    "GRIDS",
    "MULTISTEP",
    "get_sampler",
    "list_grids",
    "list_samplers",
    "make_grid",
    "sampler_class",
    "sampler_info",
]
