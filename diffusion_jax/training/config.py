"""Config validation: every section checked before anything is built or compiled.

`validate_config(cfg)` raises ValueError naming the offending field and, for choices, the valid
values. The `data`, `objective` and `model` sections are checked by their owners' validators
(`data.pipeline.validate_data_config`, `objectives`, `models`) when available.
"""

from __future__ import annotations

import math

import ml_collections

from diffusion_jax.metrics.image_eval import IMAGE_METRICS
from diffusion_jax.metrics.image_eval import validate as _validate_image_eval

# One definition each: the optimizer / LR-schedule names belong to `state`, the dtypes to `step`.
from diffusion_jax.training.state import LR_SCHEDULES, OPTIMIZERS
from diffusion_jax.training.step import COMPUTE_DTYPES

EVAL_METRICS = ("w2", "mmd", "sinkhorn", *IMAGE_METRICS)


def _check_choice(value, valid, field):
    if value not in valid:
        raise ValueError(f"{field}={value!r} is invalid; valid choices: {list(valid)}")


def _check_int(value, field, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field}={value!r} must be an integer >= {minimum}")


def _check_number(value, field, lo=None, hi=None, lo_open=False, hi_open=False):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}={value!r} must be a number")
    if not math.isfinite(value):
        raise ValueError(f"{field}={value!r} must be a finite number")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{field}={value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{field}={value!r} must be {'<' if hi_open else '<='} {hi}")


def validate_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check the config before anything is built or compiled; returns it unchanged.

    Raises ValueError naming the field and, for choices, listing the valid values. Checks the
    `training`, `mesh`, `sampling` and `eval` sections here, and the `objective` / `model` / `data`
    sections through their owners' validators when those modules provide one.
    """
    import_extensions(cfg)
    for section in ("model", "data", "objective", "training", "mesh", "sampling"):
        if section not in cfg:
            raise ValueError(
                f"config has no section {section!r}; expected sections: seed, model, data, "
                "objective, training, mesh, sampling, eval"
            )
    _check_int(cfg.seed, "seed", 0)
    _check_finite_numbers(cfg)
    from diffusion_jax.training.workdir import parse_resume

    parse_resume(cfg)
    t = cfg.training
    _check_int(t.num_steps, "training.num_steps", 0)
    _check_choice(t.optimizer, OPTIMIZERS, "training.optimizer")
    _check_choice(t.lr_schedule, LR_SCHEDULES, "training.lr_schedule")
    _check_choice(t.compute_dtype, tuple(COMPUTE_DTYPES), "training.compute_dtype")
    _check_number(t.lr, "training.lr", lo=0.0, lo_open=True)
    _check_int(t.warmup_steps, "training.warmup_steps", 0)
    _check_number(t.weight_decay, "training.weight_decay", lo=0.0)
    _check_number(t.b1, "training.b1", lo=0.0, hi=1.0, hi_open=True)
    _check_number(t.b2, "training.b2", lo=0.0, hi=1.0, hi_open=True)
    _check_number(t.grad_clip, "training.grad_clip")
    _check_int(t.grad_accum, "training.grad_accum", 1)
    if not isinstance(t.ema_decays, tuple | list):
        raise ValueError(f"training.ema_decays={t.ema_decays!r} must be a tuple of decays in [0, 1)")
    for i, d in enumerate(t.ema_decays):
        _check_number(d, f"training.ema_decays[{i}]", lo=0.0, hi=1.0, hi_open=True)
    if len(set(t.ema_decays)) != len(t.ema_decays):
        raise ValueError(f"training.ema_decays={tuple(t.ema_decays)} has duplicates")
    if t.ema_power is not None:
        # gamma > -1 keeps the profile t^gamma integrable (Karras et al. 2024, eq. 2).
        _check_number(t.ema_power, "training.ema_power", lo=-1.0, lo_open=True)
    _check_int(t.max_nonfinite_in_a_row, "training.max_nonfinite_in_a_row", 0)
    _check_int(t.get("fsdp_min_size", 1), "training.fsdp_min_size", 1)
    _check_int(t.get("prefetch", 2), "training.prefetch", 0)
    for f in ("log_every", "ckpt_every"):
        _check_int(t[f], f"training.{f}", 1)
    for f in ("keep",):
        _check_int(t[f], f"training.{f}", 1)
    for f in ("keep_every", "sample_every", "eval_every"):
        _check_int(t[f], f"training.{f}", 0)

    for axis, size in cfg.mesh.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{axis}={size!r} must be a positive integer or -1 (all remaining devices)")
    if sum(1 for v in cfg.mesh.values() if v == -1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(cfg.mesh)}")

    s = cfg.sampling
    _check_int(s.num_steps, "sampling.num_steps", 1)
    _check_int(s.num_samples, "sampling.num_samples", 1)
    _check_int(s.seed, "sampling.seed", 0)
    _check_number(s.guidance_scale, "sampling.guidance_scale")
    _validate_sampling_names(s)
    _validate_sampling_conditions(cfg)

    if "eval" in cfg:
        _check_int(cfg.eval.num_samples, "eval.num_samples", 2)
        for mname in cfg.eval.metrics:
            _check_choice(mname, EVAL_METRICS, "eval.metrics[]")
        _validate_image_eval(cfg.eval, check_files=False)  # files are checked by `evaluate`

    _validate_model(cfg.model)
    _validate_data(cfg.data)
    _validate_objective(cfg.objective)
    _validate_batch(cfg, t)
    _validate_source(cfg)
    return cfg


def _validate_source(cfg):
    """The run's source (data.pair_with) against the objective: a coupling that pairs by distance
    needs data-shaped source samples; score_head needs an MLP emitting [velocity, score]."""
    from diffusion_jax import objectives
    from diffusion_jax.data.sources import source_from_config
    from diffusion_jax.training.build import data_shape

    shape = data_shape(cfg)
    objectives.check_source(cfg.objective, source_from_config(cfg.data), shape)
    _validate_reflow(cfg)
    if cfg.objective.get("score_head", False) and cfg.model.get("name") == "mlp":
        want = 2 * int(shape[-1])
        if int(cfg.model.get("out_dim", 0) or cfg.model.dim) != want:
            raise ValueError(
                f"objective.score_head=True: the network outputs [velocity, score]; set model.out_dim={want} "
                f"(got {cfg.model.get('out_dim', 0) or cfg.model.dim})"
            )


def _validate_reflow(cfg):
    """The reflow coupling trains on pairs from a file, and a pairs file only makes sense with it
    (any other coupling would re-pair or ignore x0). The file itself is checked by `check_data_files`."""
    coupling = cfg.objective.get("coupling", "independent")
    pairs = cfg.data.get("pairs_path", "")
    if coupling == "reflow" and not pairs:
        raise ValueError(
            "objective.coupling='reflow' needs data.pairs_path (the (x0, x1) pairs .npz drawn from a trained "
            "run by `python -m diffusion_jax.reflow`)"
        )
    if pairs and coupling != "reflow":
        raise ValueError(
            f"data.pairs_path is set but objective.coupling={coupling!r}: reflow pairs need "
            "objective.coupling='reflow'"
        )


def check_data_files(cfg) -> None:
    """File checks of a run about to train (after `validate_config`, before compiling): a reflow
    pairs file exists and matches the data shape and batch size (`data.pairs.check_pairs`)."""
    if cfg.data.get("pairs_path", ""):
        from diffusion_jax.data.pairs import check_pairs
        from diffusion_jax.training.build import data_shape

        check_pairs(cfg.data.pairs_path, data_shape(cfg), int(cfg.data.batch_size))


def import_extensions(cfg) -> list[str]:
    """Import the modules listed in ``cfg.imports`` (a researcher's own parts, which call the
    ``register_*`` functions), before any name in the config is resolved; returns their names."""
    from diffusion_jax.extensions import import_modules

    imports = cfg.get("imports", ())
    if imports is not None and not isinstance(imports, str | tuple | list):
        raise ValueError(f"imports={imports!r} must be a tuple of module names")
    return import_modules(imports)


def _check_finite_numbers(tree, prefix=""):
    """Every float anywhere in the config must be finite (a NaN learning rate passes `< 0` checks)."""
    for k, v in tree.items():
        field = f"{prefix}{k}"
        if hasattr(v, "items"):
            _check_finite_numbers(v, f"{field}.")
        for i, x in enumerate(v if isinstance(v, tuple | list) else (v,)):
            if isinstance(x, float) and not math.isfinite(x):
                name = field if not isinstance(v, tuple | list) else f"{field}[{i}]"
                raise ValueError(f"{name}={x!r} must be a finite number")


def _validate_sampling_names(s):
    """Sampler + kwargs and grid + kwargs as the registry builds them (names, aliases and options
    are the registry's), the conditioning fields' types, the chunk size."""
    from diffusion_jax.extensions import is_dotted
    from diffusion_jax.samplers import registry

    kw = s.get("sampler_kwargs", None)
    try:
        registry.get_sampler(s.sampler, **(kw.to_dict() if kw is not None else {}))
    except (ValueError, TypeError) as e:
        raise ValueError(f"sampling.sampler: {e}") from None
    if s.grid not in registry.list_grids() and not is_dotted(s.grid):
        _check_choice(s.grid, tuple(registry.list_grids()), "sampling.grid")
    _check_int(s.get("chunk_size", 16), "sampling.chunk_size", 1)
    for f in ("labels", "caption", "ema"):
        if not isinstance(s.get(f, ""), str):
            raise ValueError(f"sampling.{f}={s.get(f)!r} must be a string")


def _validate_sampling_conditions(cfg):
    """sampling.labels / caption / guidance_scale against the model, before training starts (the
    periodic samples would otherwise fail at the first `sample_every`)."""
    s, m, d = cfg.sampling, cfg.model, cfg.data
    k = int(m.get("num_classes", 0) or 0)
    text = bool(d.get("captions", "") or d.get("embeddings_path", ""))
    if s.get("caption", "") and m.get("text_encoder", None) is None:
        raise ValueError("sampling.caption needs a text model (model.text_encoder)")
    if s.get("labels", ""):
        from diffusion_jax.samplers.seeds import parse_labels

        try:
            labels = parse_labels(s.labels)
        except ValueError as e:
            raise ValueError(f"sampling.labels: {e}") from None
        if not (k or text):
            raise ValueError("sampling.labels: the model is not class-conditional (model.num_classes = 0)")
        bad = [y for y in labels if k and not 0 <= y < k]
        if bad:
            raise ValueError(f"sampling.labels {bad[:5]} outside [0, {k}) (model.num_classes)")
    if float(s.guidance_scale) != 1.0 and not (k or text):
        raise ValueError(
            f"sampling.guidance_scale={s.guidance_scale}: classifier-free guidance needs a conditional "
            "model (model.num_classes > 0 or text conditioning); use 1.0"
        )


def _validate_objective(obj):
    from diffusion_jax import objectives

    objectives.validate_objective_config(obj)


def _validate_model(model_cfg):
    from diffusion_jax.models import complete_config

    complete_config(model_cfg)


def _validate_data(data_cfg):
    from diffusion_jax.data.pipeline import validate_data_config

    validate_data_config(data_cfg)


def _validate_batch(cfg, t):
    bs = cfg.data.batch_size
    if bs % t.grad_accum:
        raise ValueError(f"data.batch_size={bs} is not divisible by training.grad_accum={t.grad_accum}")
    from diffusion_jax.data.captions import validate_text_config

    validate_text_config(cfg)
    d = cfg.data
    has_text = bool(d.get("captions", "") or d.get("embeddings_path", ""))
    if cfg.objective.get("label_dropout", 0.0) > 0 and not (cfg.model.get("num_classes", 0) or has_text):
        raise ValueError(
            f"objective.label_dropout={cfg.objective.label_dropout} (classifier-free guidance) needs a "
            "class-conditional model: set model.num_classes > 0 (or condition on text: data.captions or "
            "data.embeddings_path)"
        )
