"""Shared 2-D toy setup: the formulation is the only difference between the configs in this folder.

Every config trains the same network (the 3 x 64 SELU MLP of the conditional flow matching toy
experiments, Tong et al. 2024 App. E, `configs/models/mlp.py`) on the same data stream (batch 256,
seed 0), with the same optimizer (Adam 1e-3, 20k steps, grad clip 1, EMA 0.999), and samples with
the same deterministic sampler budget; `FORMULATIONS[name]` only picks the objective preset
(`diffusion_jax.objectives.objective_preset`) and the sampler/grid that suit its path.

Datasets (`get_config(arg)`): the `diffusion_jax.data.toy2d` names (moons, 8gaussians,
checkerboard, spirals, gaussian, and gmm: the analytic 8-mode mixture with an exact
denoiser and density, `diffusion_jax.analytic.gmm_2d_ring`). An arg 'tiny' (or 'moons_tiny', ...)
shrinks everything for tests: tiny MLP, batch 32, 4 steps, no periodic hooks.
"""

import ml_collections

from configs import base
from configs.models import mlp
from diffusion_jax.data.toy2d import TOY_SAMPLERS

# name -> (objective preset, sampler, grid). Deterministic ODE samplers on the probability-flow
# ODE: Euler on the straight RF / OT paths, Heun (EDM's 2nd-order sampler, Karras et al. 2022
# Alg. 1) on the curved VP / EDM paths, with the grid each paper uses.
FORMULATIONS = {
    "vp_eps": ("vp_eps", "heun", "uniform"),
    "vp_v_cosine": ("vp_v_cosine", "heun", "uniform"),
    "edm": ("edm", "heun", "edm"),
    "rf_uniform": ("rf_uniform", "euler", "uniform"),
    "rf_logit_normal": ("rf_logit_normal", "euler", "uniform"),
    "ot_cfm": ("ot_cfm", "euler", "uniform"),
}
# The CFM family in one file (configs/toy2d/cfm.py: coupling, sigma, source, solver are fields) and
# reflow on a pairs file (configs/toy2d/reflow.py); not among the demo's formulations.
FAMILIES = {"cfm": ("i_cfm", "euler", "uniform"), "reflow": ("reflow", "euler", "uniform")}
# Every toy the data layer defines is a variant (explicit table in diffusion_jax.data.toy2d).
DATASETS = tuple(sorted(TOY_SAMPLERS))
DEFAULT_DATASET = "moons"


def parse_arg(arg):
    """'moons' -> ('moons', False); 'moons_tiny' / 'tiny' -> (dataset, True)."""
    arg = arg or DEFAULT_DATASET
    tiny = arg == "tiny" or arg.endswith("_tiny")
    name = DEFAULT_DATASET if arg == "tiny" else arg.removesuffix("_tiny")
    if name not in DATASETS:
        raise ValueError(f"toy2d dataset {name!r} unknown; valid: {list(DATASETS)} (optionally with '_tiny')")
    return name, tiny


def make(formulation: str, arg=None) -> ml_collections.ConfigDict:
    """The toy2d config of `formulation` (a FORMULATIONS key) on dataset `arg`."""
    from diffusion_jax import objectives
    from diffusion_jax.data.pipeline import default_data_config

    table = {**FORMULATIONS, **FAMILIES}
    if formulation not in table:
        raise ValueError(f"toy2d formulation {formulation!r} unknown; valid: {sorted(table)}")
    dataset, tiny = parse_arg(arg)
    preset, sampler, grid = table[formulation]
    cfg = base.get_config()
    cfg.model = mlp.get_config("cfm")
    cfg.data = default_data_config("toy2d", dataset, batch_size=256)
    cfg.objective = objectives.objective_preset(preset)

    t = cfg.training
    t.num_steps = 20_000
    t.lr = 1e-3
    t.grad_clip = 1.0
    t.ema_decays = (0.999,)
    t.log_every = 200
    t.ckpt_every = 5000
    t.sample_every = 5000
    t.eval_every = 5000

    cfg.sampling.sampler = sampler
    cfg.sampling.grid = grid
    cfg.sampling.num_steps = 50
    cfg.sampling.num_samples = 2000
    cfg.eval.num_samples = 2000
    cfg.eval.metrics = ("w2", "mmd")
    cfg.mesh.data = -1

    if tiny:
        cfg.model = mlp.get_config("cfm")
        cfg.model.width = 16
        cfg.data.batch_size = 32
        t.num_steps = 4
        t.log_every = 2
        t.ckpt_every = 2
        t.sample_every = 0
        t.eval_every = 0
        cfg.sampling.num_steps = 4
        cfg.sampling.num_samples = 16
        cfg.eval.num_samples = 64
    return cfg
