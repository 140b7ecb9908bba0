"""Evaluate a trained run: `python -m diffusion_jax.evaluate --config=CFG --workdir=DIR`.

Loads the newest readable checkpoint of DIR (or --step), draws `eval.num_samples` samples with the
config's sampler (`sampling.*`, overridable) from the chosen weights (--ema: '' = first EMA copy,
'params', or an EMA name), computes the low-dimensional metrics (toy 2-D: exact W2 with POT and MMD
against fresh data samples), writes `eval/<step>.json` and a sample PNG, and prints the metrics.
--config is optional: by default the run's own config.json is used (`--config.*` overrides need --config).
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (default: the run's config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of a training run.")
_EMA = flags.DEFINE_string("ema", None, "Weights: '' (first EMA), 'params', or an EMA name.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")


def evaluate(cfg, workdir: str, *, ema: str | None = None, step: int | None = None) -> dict:
    """Metrics of the run in `workdir` under the sampling/eval settings of `cfg` (see module doc).

    Returns: {"step": s, "ema": name, "num_samples": n, <metric>: value, ...}; also written to
    `<workdir>/eval/<step>.json`.
    """
    import jax

    from diffusion_jax import objectives
    from diffusion_jax.training import checkpoints, periodic

    state, run_cfg, net = checkpoints.load_train_state(workdir, step)
    cfg = cfg or run_cfg
    which = cfg.eval.get("ema", "") if ema is None else ema
    params = checkpoints.select_params(state, which)
    denoiser = objectives.make_denoiser_from_config(run_cfg.objective, net.net_fn, params)
    n = int(cfg.eval.num_samples)
    samples = periodic.generate_samples(cfg, denoiser, n)
    metrics = periodic.evaluate_samples(cfg, samples)
    s = int(jax.device_get(state.step))
    out = {"step": s, "ema": which or "first", "num_samples": n, **metrics}
    if jax.process_index() == 0:
        d = os.path.join(workdir, "eval")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{s:08d}.json"), "w") as f:
            json.dump(out, f, indent=1)
        shown = samples[: int(cfg.sampling.num_samples)] if samples.ndim == 4 else samples
        ref = periodic.reference_samples(cfg, len(shown)) if samples.ndim == 2 else None
        periodic.save_samples_png(shown, os.path.join(d, f"{s:08d}.png"), ref, f"step {s}")
    return out


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        # Orbax logs every save/restore at INFO; keep the console to warnings unless -v is given.
        absl_logging.set_verbosity(absl_logging.WARNING)
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    from diffusion_jax.training import checkpoints
    from diffusion_jax.training.config import validate_config

    cfg = _CONFIG.value if _CONFIG.value is not None else checkpoints.load_config(_WORKDIR.value)
    validate_config(cfg)
    out = evaluate(cfg, _WORKDIR.value, ema=_EMA.value, step=_STEP.value)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    app.run(main)
