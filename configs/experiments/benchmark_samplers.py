"""Config of `experiments/benchmark_samplers.py` (issue 3, section 9).

Variants (`--config=configs/experiments/benchmark_samplers.py:<variant>`):
  full   every registered sampler x the continuous-time grids x NFE in {5, 10, 20, 50, 100};
         2000 samples for the ODE error, 1000 for W2 (compile-bound: ~5-9 minutes on a 2-core CPU).
  quick  a handful of samplers, one grid, NFE in {5, 10, 20}, 256 samples (well under a minute).

Any field can be overridden on the command line, e.g. `--config.denoiser.schedule=edm
--config.denoiser.kind=x0 --config.samplers=euler,heun`. A trained model:
`--config.denoiser.source=checkpoint --config.denoiser.workdir=/path/to/run --config.x64=False
--config.reference.rtol=1e-6 --config.reference.atol=1e-6` (float32 network: a 1e-10 reference is
out of reach), plus `--config.data.name=none --config.denoiser.sample_shape="(28, 28, 1)"` when the
model was not trained on an analytic distribution.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# A 2-D Gaussian mixture with unequal weights and widths: curved probability-flow trajectories
# (a single Gaussian has linear-in-logSNR dynamics and is too easy to tell orders 2 and 3 apart).
GMM_MEANS = ((-1.5, 0.5), (1.0, 1.2), (0.5, -1.5), (2.0, -0.5), (-0.5, -0.3))
GMM_STDS = (0.15, 0.25, 0.1, 0.3, 0.2)
GMM_WEIGHTS = (0.3, 0.2, 0.2, 0.15, 0.15)

# The continuous-time grids (the `linspace` / `leading` / `trailing` spacings are for 1000-step
# discrete models and are left out by default).
DEFAULT_GRIDS = ("karras", "logsnr", "uniform", "quadratic")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Return the benchmark config for variant `arg` in {'full', 'quick'} (default 'full')."""
    variant = arg or "full"
    if variant not in ("full", "quick"):
        raise ValueError(f"unknown variant {variant!r}; valid variants: ['full', 'quick']")

    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    # float64 throughout: high-order samplers reach 1e-8 errors at NFE 100, below float32 resolution.
    c.x64 = True

    # --- the denoiser ------------------------------------------------------------------------------
    c.denoiser = ml_collections.ConfigDict()
    c.denoiser.source = "analytic"  # 'analytic' (exact GMM denoiser) or 'checkpoint'
    c.denoiser.schedule = "vp_linear"  # any name of diffusion_jax.schedules.SCHEDULES
    c.denoiser.schedule_kwargs = ml_collections.ConfigDict()  # e.g. {'beta_max': 20.0}
    c.denoiser.shift = config_dict.placeholder(float)  # SD3 shift wrapped around the schedule
    c.denoiser.kind = "eps"  # prediction kind of the analytic denoiser
    c.denoiser.workdir = ""  # training workdir for source='checkpoint'
    c.denoiser.ema = ""  # checkpoint weights: '' -> the first EMA copy, 'params' -> raw, or an EMA name
    c.denoiser.step = config_dict.placeholder(int)  # checkpoint step (None -> the newest)
    # Sample shape for source='checkpoint' (the analytic source takes it from the mixture means).
    c.denoiser.sample_shape = config_dict.placeholder(tuple)

    # --- the data (exact samples for W2; the analytic denoiser's distribution) ----------------------
    c.data = ml_collections.ConfigDict()
    # 'custom' (the isotropic mixture below), a name of analytic.DISTRIBUTIONS, or 'none' (no W2; for
    # a checkpoint not trained on an analytic distribution).
    c.data.name = "custom"
    c.data.kwargs = ml_collections.ConfigDict()  # arguments of analytic.get_distribution(name, ...)
    c.data.means = GMM_MEANS
    c.data.stds = GMM_STDS
    c.data.weights = GMM_WEIGHTS

    # --- what to run -------------------------------------------------------------------------------
    c.samplers = "all"  # 'all' or a comma-separated list of registry names
    # Dropped from 'all': the order-parameterised classes whose defaults duplicate fixed-order entries
    # (dpm_solver = dpm_solver_2, dpmpp_multistep = dpmpp_2m, unipc = unipc_bh2 order 3).
    c.exclude_samplers = "dpm_solver,dpmpp_multistep,unipc"
    c.grids = ",".join(DEFAULT_GRIDS)  # comma-separated names of samplers.registry.list_grids()
    c.nfes = (5, 10, 20, 50, 100)  # target NFEs; each sampler uses the most steps whose NFE fits
    # rtol = atol sweep for adaptive solvers (each tolerance is a separate compile: keep it short).
    c.adaptive_tols = (1e-2, 1e-3, 1e-4, 1e-6)
    # Adaptive solvers integrate between the first grid's endpoints; diffrax's first trial step is
    # that grid's first interval at this many steps.
    c.adaptive_grid_steps = 10
    # Per-sampler hyperparameters, {name: {...}}. EDM's stochastic sampler is deterministic Heun at its
    # default S_churn = 0; benchmark it with churn (S_min / S_max in sigma~ units, Karras et al. 2022
    # Alg. 2), S_noise = 1 since the denoiser is exact.
    c.sampler_kwargs = ml_collections.ConfigDict(
        {"edm_stochastic": {"s_churn": 40.0, "s_min": 0.05, "s_max": 50.0}}
    )
    c.t_min = config_dict.placeholder(float)  # default: the schedule's t_min
    c.t_max = config_dict.placeholder(float)  # default: the schedule's t_max
    c.final_zero = False  # end every grid at t_min (the ODE is singular at t=0 for VP paths)

    # --- measurements ------------------------------------------------------------------------------
    c.num_samples = 2000  # samples for the error to the reference ODE solution
    # First n of those (and n fresh exact draws) for W2; 0 disables W2. Exact OT costs ~0.25 s at
    # n = 1000 and ~0.9 s at n = 2000 per run on this CPU, x 400+ runs.
    c.w2_num_samples = 1000
    c.reference = ml_collections.ConfigDict()
    c.reference.solver = "dopri8"  # diffrax solver: dopri8, dopri5 or tsit5
    c.reference.rtol = 1e-10
    c.reference.atol = 1e-10
    c.reference.max_steps = 100_000
    c.order_min_nfe = 20  # convergence orders: slope of log err vs log NFE over NFE >= this

    if variant == "quick":
        c.samplers = "euler,heun,dpm_solver_2,dpmpp_2m,ddim,euler_maruyama"
        c.grids = "logsnr"
        c.nfes = (5, 10, 20)
        c.adaptive_tols = (1e-3, 1e-5)
        c.num_samples = 256
        c.w2_num_samples = 256
        c.order_min_nfe = 5
    return c
