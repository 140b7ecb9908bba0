"""Shared helpers of the converter parity tests (torch models with random weights)."""

import numpy as np
import torch


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Overwrite every floating parameter with N(0, scale^2) (zero-initialised layers included), norm
    scales with 1 + N(0, scale^2), so no layer of the parity test is trivially zero or identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            is_norm_scale = p.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_scale else noise)


def state_numpy(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (the figure each parity test prints and bounds by 1e-4)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def meta_count(module_fn) -> int:
    with torch.device("meta"):
        m = module_fn()
    return sum(p.numel() for p in m.parameters())
