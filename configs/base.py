"""The base experiment config every family extends, and `validate_config`.

Sections: `seed`; `imports` (modules of the researcher's own parts, imported before any name is
resolved: see `diffusion_jax.extensions`); `model` (see `configs/models/`); `data` (see `diffusion_jax.data`); `objective`
(see `diffusion_jax.objectives`); `training` (optimizer, schedule, EMA, precision, cadence);
`mesh` (device mesh axis sizes, -1 = all remaining devices); `sampling` (sampler used for periodic
samples and by default in `python -m diffusion_jax.sample`); `eval` (evaluation hooks).

Any field is overridable on the command line, e.g.
`--config=configs/toy2d/rf_uniform.py:moons --config.training.lr=3e-4`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from diffusion_jax.metrics import image_eval
from diffusion_jax.training.config import validate_config  # noqa: F401  (re-exported)


def get_config(arg=None) -> ml_collections.ConfigDict:
    """Defaults shared by every experiment; families fill `model`, `data` and `objective`."""
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.imports = ()  # e.g. ("my_lab.parts",): modules that call register_* (docs/design.md)
    # How a run starts in a workdir that already holds one: '' (continue it; the config must match),
    # 'restart' (from step 0 when all its checkpoints are damaged), 'finetune:<run dir>' (weights of
    # another run, fresh optimizer). See diffusion_jax/training/workdir.py.
    cfg.resume = ""
    cfg.model = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict()
    cfg.objective = ml_collections.ConfigDict()

    t = cfg.training = ml_collections.ConfigDict()
    t.num_steps = 10_000
    t.optimizer = "adam"
    t.lr = 1e-3
    t.warmup_steps = 0
    t.lr_schedule = "constant"
    t.weight_decay = 0.0
    t.b1 = 0.9
    t.b2 = 0.999
    t.eps = 1e-8
    t.grad_clip = 1.0  # global-norm clipping; <= 0 disables
    t.grad_accum = 1  # microbatches per update (the data batch is split, not enlarged)
    t.ema_decays = (0.999,)
    t.ema_power = config_dict.placeholder(float)  # EDM2 power-function EMA gamma, or None
    t.compute_dtype = "float32"
    t.fsdp_min_size = 2**18  # with mesh.fsdp > 1: parameters with fewer entries stay replicated
    t.max_nonfinite_in_a_row = 20  # halt after this many skipped updates in a row (0 = never)
    t.log_every = 100
    t.ckpt_every = 1000
    t.keep = 3  # most recent checkpoints kept
    t.keep_every = 0  # additionally keep every checkpoint whose step is a multiple (0 = none)
    t.async_checkpointing = True
    t.fast_compile = False  # compile the step without XLA optimisation (CPU tests, debugging)
    t.prefetch = 2  # batches read + host-transformed (e.g. exact-OT paired) ahead in threads; 0 = inline
    t.sample_every = 0  # 0 = off
    t.eval_every = 0  # 0 = off

    m = cfg.mesh = ml_collections.ConfigDict()
    m.data = -1
    m.fsdp = 1

    # How the run is sampled: periodic samples, and the defaults of `diffusion_jax.sample` /
    # `evaluate` / `Pipeline.from_workdir` on this run (diffusion_jax/training/sampling.py).
    s = cfg.sampling = ml_collections.ConfigDict()
    s.sampler = "euler"
    s.sampler_kwargs = ml_collections.ConfigDict()  # e.g. --config.sampling.sampler_kwargs.order=3
    s.grid = "uniform"
    s.grid_kwargs = ml_collections.ConfigDict()  # e.g. --config.sampling.grid_kwargs.t_min=0.001
    s.num_steps = 50
    s.seed = 0  # base seed: seed s uses fold_in(key(seed), s)
    s.num_samples = 64  # periodic samples (seeds 0..num_samples-1)
    s.guidance_scale = 1.0
    s.labels = ""  # class-conditional models: label of seed s = labels[s mod len] ("" = s mod K)
    s.caption = ""  # text models: one caption for every seed ("" = class-template captions)
    s.ema = ""  # weights: "" = the first EMA copy, "params" = raw params, or an EMA name
    s.chunk_size = 16  # samples per compiled chunk (part of what fixes a seed's bits)

    e = cfg.eval = ml_collections.ConfigDict()
    e.num_samples = 2000  # seeds 0..num_samples-1 of the sampling settings
    e.metrics = ("w2", "mmd")
    e.save_samples = False  # evaluate also writes every seed's .npz to eval/<step>_samples/
    # image metrics (fid, kid, fd_classifier, precision_recall, bpd, bpd_elbo): weight files, reference
    # split and sizes; see diffusion_jax.metrics.image_eval
    e.update(dict(image_eval.DEFAULTS))
    return cfg
