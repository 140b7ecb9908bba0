"""Named objective presets: the formulations the literature trains, as objective configs.

Each preset is a point in the space of `objectives` (schedule x prediction kind x weighting x time
distribution x coupling x path noise); "diffusion vs flow matching" is a diff of a few of these
fields. `objective_preset(name)` returns a fresh ConfigDict (schema:
`objective_config.default_objective_config`).
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from diffusion_jax.objective_config import default_objective_config


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


__all__ = ["OBJECTIVE_PRESETS", "objective_preset"]
