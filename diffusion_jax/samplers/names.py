"""The names users type for samplers and grids, and the one-line descriptions `--list` prints.

Aliases: a name is normalised (lower case, "++" -> "pp", spaces / hyphens / dots -> "_", a leading
"k_" or "sample_" dropped), then looked up; a trailing grid name ("_karras", "_exponential", ...)
selects the grid too. So "DPM++ 2M Karras" -> ("dpmpp_2m", "karras"), "euler_a" -> ("euler_ancestral",
None), "k_lms" -> ("lms", None). Pure data and functions: no registration happens here.
"""

from __future__ import annotations

import re

# Sampler names from other tools (k-diffusion, AUTOMATIC1111, ComfyUI) -> our registry names.
SAMPLER_ALIASES = {
    "euler_a": "euler_ancestral",
    "dpmpp_2s_a": "dpmpp_2s_ancestral",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_3m_sde_gpu": "dpmpp_3m_sde",
    "dpmpp_sde_gpu": "dpmpp_sde",
    "ipndm_variable": "ipndm_v",
    "uni_pc": "unipc",
    "uni_pc_bh2": "unipc_bh2",
    "ddpm_ancestral": "ddpm",
}

# Grid names other tools append to a sampler name -> our grid names.
GRID_SUFFIXES = {
    "karras": "karras",
    "exponential": "logsnr",  # k-diffusion's get_sigmas_exponential: uniform in log sigma
    "polyexponential": "polyexponential",
    "sgm_uniform": "sgm_uniform",
    "simple": "simple",
    "beta": "beta",
    "ays": "ays",
    "align_your_steps": "ays",
    "uniform": "uniform",
    "logsnr": "logsnr",
    "trailing": "trailing",
}

# name -> (order, NFE rule for N steps, one-line description). "to 0" = a final step to sigma = 0.
SAMPLER_FACTS = {
    "euler": ("1", "N", "Euler on the probability-flow ODE, in t or EDM's sigma~ (coords)"),
    "heun": ("2", "2N (2N-1 to 0)", "EDM Heun (Karras et al. 2022, Alg. 1)"),
    "midpoint": ("2", "2N", "explicit midpoint Runge-Kutta on the probability-flow ODE"),
    "rk4": ("4", "4N (4N-3 to 0)", "classical Runge-Kutta 4 on the probability-flow ODE"),
    "ddim": ("1", "N", "deterministic DDIM, eta = 0 (Song et al. 2021)"),
    "dpm_solver": (
        "order (2)",
        "order*N (-(order-1) to 0)",
        "single-step DPM-Solver, eps prediction (Lu et al. 2022)",
    ),
    "dpm_solver_1": ("1", "N", "DPM-Solver-1 (= DDIM)"),
    "dpm_solver_2": ("2", "2N (2N-1 to 0)", "DPM-Solver-2 (Lu et al. 2022, Alg. 1)"),
    "dpm_solver_3": ("3", "3N (3N-2 to 0)", "DPM-Solver-3 (Lu et al. 2022, Alg. 2)"),
    "dpmpp_2s": ("2", "2N (2N-1 to 0)", "DPM-Solver++(2S), single-step, data prediction"),
    "dpmpp_multistep": ("order (2)", "N", "DPM-Solver++ multistep of any order 1..3"),
    "dpmpp_2m": ("2", "N", "DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2)"),
    "dpmpp_3m": ("3", "N", "DPM-Solver++(3M), third-order multistep"),
    "unipc": ("order+1 (4)", "N", "UniPC predictor-corrector (Zhao et al. 2023), B(h) = e^h - 1"),
    "unipc_bh1": ("order+1 (4)", "N", "UniPC with B(h) = h"),
    "unipc_bh2": ("order+1 (4)", "N", "UniPC with B(h) = e^h - 1"),
    "ipndm": (
        "4 on uniform-sigma~ grids, 2 on Karras",
        "N",
        "iPNDM, equal-step Adams-Bashforth (Zhang & Chen 2023): order 2 on Karras grids",
    ),
    "ipndm_v": ("4", "N", "iPNDM with variable-step Adams-Bashforth coefficients (= lms)"),
    "lms": ("4", "N", "k-diffusion LMS: variable-step Adams-Bashforth in sigma~, in-graph coefficients"),
    "dopri5": ("5(4)", "1 + 6 x attempted steps", "adaptive Dormand-Prince via diffrax"),
    "tsit5": ("5(4)", "1 + 6 x attempted steps", "adaptive Tsitouras via diffrax"),
    "euler_maruyama": ("weak 1", "N", "Euler-Maruyama on the reverse SDE (Song et al. 2021)"),
    "ddpm": ("weak 1", "N", "DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on any path"),
    "ddim_eta": ("weak 1", "N", "DDIM with eta > 0 (Song et al. 2021, eq. 12/16)"),
    "euler_ancestral": ("weak 1", "N", "k-diffusion Euler ancestral in sigma~"),
    "edm_stochastic": (
        "2 (ODE part)",
        "2N (2N-1 to 0)",
        "EDM stochastic sampler with churn (Karras et al. 2022, Alg. 2)",
    ),
    "dpmpp_2m_sde": ("2 (ODE part)", "N", "DPM-Solver++(2M) SDE"),
    "dpmpp_3m_sde": ("3 (ODE part)", "N", "DPM-Solver++(3M) SDE"),
    "pc": ("weak 1", "N (1 + n_corrector)", "predictor-corrector with Langevin corrector (Song et al. 2021)"),
    "dpmpp_2s_ancestral": ("2 (ODE part)", "2N (2N-1 to 0)", "k-diffusion DPM++ 2S ancestral"),
    "dpmpp_sde": ("2 (ODE part)", "2N (2N-1 to 0)", "k-diffusion DPM++ SDE (stochastic 2S, Brownian noise)"),
    "interpolant_em": (
        "weak 1",
        "N",
        "stochastic-interpolant Euler-Maruyama (Albergo & Vanden-Eijnden 2023), kwargs diffusion>=0, "
        "shape=constant|bridge; needs objective.score_head",
    ),
    "restart": (
        "2 (ODE part)",
        "2N (2N-1 to 0) + 2 K steps",
        "Restart sampling (Xu et al. 2023): Heun + K noise/Heun loops",
    ),
}

GRID_FACTS = {
    "uniform": "uniform in t",
    "karras": "Karras rho-schedule, uniform in sigma~^(1/rho) (Karras et al. 2022, eq. 5; rho=7)",
    "edm": "Karras grid with EDM's sigma~ range [0.002, 80] clipped to the schedule (rho=7)",
    "logsnr": "uniform in logSNR (= k-diffusion 'exponential')",
    "quadratic": "quadratic in t (DDIM's quadratic skip)",
    "shifted": "uniform in t then the SD3 shift warp (shift=3)",
    "linspace": "discrete timesteps, linspace spacing (Lin et al. 2024, Table 2)",
    "leading": "discrete timesteps, leading spacing (Lin et al. 2024, Table 2)",
    "trailing": "discrete timesteps, trailing spacing (Lin et al. 2024, Table 2)",
    "simple": "discrete timesteps T - floor(k T / S) (ComfyUI 'simple')",
    "polyexponential": "k-diffusion polyexponential: log sigma~ ramp^rho (rho=1 = logsnr)",
    "sgm_uniform": "uniform in t, last of N+2 points dropped (use final_zero=True)",
    "beta": "t at Beta(0.6, 0.6) quantiles (Lee et al. 2024)",
    "ays": "Align Your Steps published tables sd15 / sdxl / svd (Sabour et al. 2024, Table 3), log-linear interp.",
}

GRID_NFE_RULE = "N steps; final_zero=True adds one step to t = 0"


def normalise(name: str) -> str:
    """Lower case, '++' -> 'pp', spaces / hyphens / dots -> '_', repeated '_' collapsed."""
    n = name.strip().lower().replace("++", "pp")
    n = re.sub(r"[\s\-.]+", "_", n)
    return re.sub(r"_+", "_", n).strip("_")


def _sampler_name(n: str, valid) -> str | None:
    for cand in (n, n.removeprefix("k_"), n.removeprefix("sample_")):
        if cand in valid:
            return cand
        if cand in SAMPLER_ALIASES and SAMPLER_ALIASES[cand] in valid:
            return SAMPLER_ALIASES[cand]
    return None


def resolve(name: str, valid_samplers, valid_grids) -> tuple[str, str | None]:
    """(sampler, grid or None) for a name or alias; ValueError listing valid names otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"sampler name must be a string, got {name!r}")
    n = normalise(name)
    got = _sampler_name(n, valid_samplers)
    if got is not None:
        return got, None
    for suffix in sorted(GRID_SUFFIXES, key=len, reverse=True):
        if n.endswith("_" + suffix):
            got = _sampler_name(n[: -len(suffix) - 1], valid_samplers)
            grid = GRID_SUFFIXES[suffix]
            if got is not None and grid in valid_grids:
                return got, grid
    raise ValueError(
        f"unknown sampler {name!r}; valid samplers: {sorted(valid_samplers)}; aliases: "
        f"{sorted(SAMPLER_ALIASES)}, optionally followed by a grid: {sorted(GRID_SUFFIXES)}"
    )
