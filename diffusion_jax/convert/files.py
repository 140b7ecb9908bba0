"""Reading and writing the published file layouts (no download: the user supplies the files).

- diffusers model folders: `config.json` + `diffusion_pytorch_model.safetensors` (read with our own
  safetensors reader) or `diffusion_pytorch_model.bin` (a torch pickle); a pipeline folder is
  accepted too, the model then being read from its `subfolder` (`transformer`, `vae`, `unet`, ...).
- transformers model folders: `config.json` + `model.safetensors` (or `pytorch_model.bin`).
- PyTorch `.pt` / `.pth` / `.bin` state dicts (the official DiT checkpoints): need `torch`, imported
  only here and only for these files (`pip install torch`, or the `parity` extra).
"""

from __future__ import annotations

import json
import os

import numpy as np

from diffusion_jax.convert import safetensors_io
from diffusion_jax.convert.common import ConversionError

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


def read_torch(path: str) -> dict[str, np.ndarray]:
    """A PyTorch pickled state dict (`.pt`, `.pth`, `.bin`) -> {name: float32/int numpy array}."""
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading a PyTorch pickle needs torch (pip install torch)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a wrong file
        raise ConversionError(f"{path}: not a PyTorch state dict ({type(e).__name__}: {e})") from None
    for key in ("ema", "state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu()
            out[k] = v.float().numpy() if v.is_floating_point() else v.numpy()
    return out


def write_torch(path: str, sd: dict[str, np.ndarray]) -> None:
    """Write a state dict as a PyTorch pickle (needs torch)."""
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: writing a PyTorch pickle needs torch (pip install torch)") from None
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)


def read_weights(path: str) -> dict[str, np.ndarray]:
    """One weight file: .safetensors (our reader) or a torch pickle."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path!r} does not exist")
    if path.endswith(".safetensors"):
        sd, _ = safetensors_io.read(path)
        return {
            k: (v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v)
            for k, v in sd.items()
        }
    return read_torch(path)


def read_model_folder(folder: str, *, subfolder: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, state dict) of a diffusers / transformers model folder.

    `folder` may be the model folder itself or a pipeline folder holding it under `subfolder`.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder!r} does not exist")
    if subfolder and not os.path.isfile(os.path.join(folder, "config.json")):
        folder = os.path.join(folder, subfolder)
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise ConversionError(f"{folder}: no config.json (expected a diffusers/transformers model folder)")
    with open(cfg_path) as f:
        cfg = json.load(f)
    for name in WEIGHT_NAMES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return cfg, read_weights(p)
    raise ConversionError(f"{folder}: none of the weight files {list(WEIGHT_NAMES)} is present")


read_diffusers_folder = read_model_folder


def write_model_folder(folder: str, cfg_json: dict, sd: dict[str, np.ndarray], *, weights_name: str) -> None:
    """Write `config.json` + a safetensors weight file (the layout `from_pretrained` reads)."""
    os.makedirs(folder, exist_ok=True)
    safetensors_io.write(os.path.join(folder, weights_name), sd, {"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2, sort_keys=True)


def write_diffusers_folder(folder: str, cfg_json: dict, sd: dict[str, np.ndarray]) -> None:
    write_model_folder(folder, cfg_json, sd, weights_name="diffusion_pytorch_model.safetensors")
