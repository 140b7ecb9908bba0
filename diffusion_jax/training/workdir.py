"""Opening a workdir for training: is it usable, is it this run's, and how to start.

Everything here reads only; `train` calls it before anything is written to disk.

`config.resume` (default "") chooses how a run starts:
  ""                   continue the run saved in the workdir (or start one if there is none); the
                       requested config must agree with the saved one on every field that changes
                       the model or what it learns (`GUARDED`), else `RunConfigMismatch`.
  "restart"            start again from step 0 in a workdir whose checkpoints are all damaged (they
                       stay in checkpoints_corrupt/); refused while an intact checkpoint exists.
  "finetune:<run dir>" start from step 0 with a fresh optimizer and this config, the parameters
                       and EMA copies taken from the newest intact checkpoint of another run (read
                       only). Re-running the same command resumes the fine-tuning run itself.
"""

from __future__ import annotations

import os

from diffusion_jax.training import checkpoints as ckpt_lib

# Fields (dotted prefixes) that change the model, what it learns or the state's structure.
GUARDED = (
    "seed",
    "model.",
    "objective.",
    "data.source",
    "data.name",
    "data.pair_with",
    "data.split",
    "data.batch_size",
    "data.image_size",
    "data.num_channels",
    "data.captions",
    "data.embeddings_path",
    "training.optimizer",
    "training.ema_decays",
    "training.ema_power",
    "training.grad_accum",
    "training.grad_clip>0",
)


class RunConfigMismatch(ValueError):
    """The requested config would change the run saved in the workdir."""


def _flat(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list | tuple) else v
    return out


def _guarded(cfg) -> dict:
    flat = _flat(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    flat["training.grad_clip>0"] = float(flat.get("training.grad_clip") or 0) > 0
    return {
        k: v for k, v in flat.items() if any(k == g or (g.endswith(".") and k.startswith(g)) for g in GUARDED)
    }


def config_differences(saved, requested) -> list[tuple[str, object, object]]:
    """[(field, saved value, requested value)] over the `GUARDED` fields."""
    a, b = _guarded(saved), _guarded(requested)
    missing = object()
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            out.append((k, "(absent)" if va is missing else va, "(absent)" if vb is missing else vb))
    return out


def parse_resume(cfg) -> tuple[str, str | None]:
    """("auto" | "restart" | "finetune", source run dir or None) from `cfg.resume`."""
    value = cfg.get("resume", "") or ""
    if value == "":
        return "auto", None
    if value == "restart":
        return "restart", None
    if isinstance(value, str) and value.startswith("finetune:") and value[len("finetune:") :]:
        return "finetune", os.path.abspath(value[len("finetune:") :])
    raise ValueError(f"resume={value!r} is invalid; valid choices: ['', 'restart', 'finetune:<run dir>']")


def check_workdir(cfg, workdir: str) -> str:
    """Read-only checks before a training run writes anything; returns the absolute workdir.

    Raises ValueError (a file where the workdir should be; an unusable `resume`),
    `RunConfigMismatch` (the saved run is another experiment).
    """
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} exists and is not a directory")
    mode, source = parse_resume(cfg)
    config_path = os.path.join(workdir, ckpt_lib.CONFIG_FILE)
    if os.path.isfile(config_path):
        diffs = config_differences(ckpt_lib.load_config(workdir), cfg)
        if diffs:
            lines = "\n".join(f"  {k}: saved {a!r}, requested {b!r}" for k, a, b in diffs)
            raise RunConfigMismatch(
                f"workdir {workdir} holds a run whose config differs in fields that change the model or "
                f"what it learns:\n{lines}\nNothing was written. Either train in a new --workdir, or "
                f"fine-tune from this run's weights with the new config: --workdir=<new dir> "
                f"--config.resume=finetune:{workdir}"
            )
    if mode == "finetune":
        if source == workdir:
            raise ValueError("resume=finetune:<run dir> must name another run than --workdir")
        if not os.path.isfile(os.path.join(source, ckpt_lib.CONFIG_FILE)):
            raise ValueError(f"resume=finetune:{source}: no run there ({ckpt_lib.CONFIG_FILE} not found)")
    return workdir


def corrupt_steps(workdir: str) -> list[str]:
    """Names under `<workdir>/checkpoints_corrupt` (checkpoints moved aside as damaged)."""
    root = os.path.join(workdir, ckpt_lib.CORRUPT_DIR)
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


__all__ = [
    "GUARDED",
    "RunConfigMismatch",
    "check_workdir",
    "config_differences",
    "corrupt_steps",
    "parse_resume",
]
