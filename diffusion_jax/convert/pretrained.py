"""Published models as samplable denoisers: `load_pretrained(cfg.pretrained)` for the sampling engine.

A pretrained config (`configs/pretrained/*.py`) names converted files (never downloads them):

  pretrained.denoiser.path / .published / .convert   the converted network, where the original is
                                                    published, and the command that converts it
  pretrained.autoencoder.{path, published, convert}  optional: latent models decode through it
  pretrained.kind, .time_input                       what the network predicts and sees (e.g. DiT:
                                                    eps at the DDPM step index n - 1 = 1000 t - 1)
  pretrained.latent_scale / .latent_shift            None = the autoencoder file's published factors
  pretrained.init_noise                              the initial state at the first grid time t0:
                                                    'marginal' (x_T = eps, unit variance on a VP path:
                                                    what DDPM / DDIM reference code and diffusers start
                                                    from) or 'sigma' (sigma(t0) eps, the engine's default)

plus the usual sampling fields (`schedule`: DiT's / DDPM's 1000 linear betas 1e-4 .. 0.02 as
`vp_discrete`; `sampler`, `grid`, `conditioning`). Learned-sigma channels (DiT: 8 outputs for 4
latent channels, Nichol & Dhariwal 2021) are dropped: the denoiser returns eps only, which is what
deterministic samplers (and ancestral ones with the fixed DDPM variance) use.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax import predictions, schedules
from diffusion_jax.convert import api


@dataclasses.dataclass(frozen=True)
class _Net:
    """net_fn of a converted network: merges the NNX graph, calls it, keeps the first `channels`
    output channels (drops learned-sigma channels). A frozen dataclass: equal for equal models."""

    graphdef: object
    channels: int

    def __call__(self, params, z, t_in, cond=None, rng=None):
        del rng
        model = nnx.merge(self.graphdef, params)
        label = None if not cond else cond.get("label")
        out = model(z, t_in, label=label) if label is not None else model(z, t_in)
        return out[..., : self.channels]


@dataclasses.dataclass
class Pretrained:
    """A loaded pretrained model: the denoiser (diffusion space), the per-sample shape it samples,
    `decode` (diffusion space -> images in [-1, 1], or None for pixel models), the number of classes
    (0 = unconditional; the null label is `num_classes`) and the files' checksums."""

    denoiser: predictions.Denoiser
    shape: tuple[int, ...]
    decode: Callable[[jax.Array], jax.Array] | None
    num_classes: int
    sha256: dict


def missing_file_message(entry, what: str) -> str:
    """'<path> is missing: ...' naming the file, where it is published and the convert command."""
    return (
        f"pretrained {what} file {entry.path!r} is missing. The original is published at "
        f"{entry.published}; convert it with: {entry.convert} "
        f"(or point config.pretrained.{what}.path at an existing converted file)"
    )


def check_files(pcfg) -> None:
    """Raise FileNotFoundError (one line naming file, source and command) if a converted file is absent."""
    for what in ("denoiser", "autoencoder"):
        entry = pcfg.get(what)
        if entry is None or (what == "autoencoder" and not entry.get("path")):
            continue
        if not os.path.isfile(entry.path):
            raise FileNotFoundError(missing_file_message(entry, what))


def _schedule(cfg):
    kw = (
        cfg.schedule.kwargs.to_dict()
        if hasattr(cfg.schedule.kwargs, "to_dict")
        else dict(cfg.schedule.kwargs)
    )
    return schedules.get_schedule(cfg.schedule.name, shift=cfg.schedule.get("shift"), **kw)


def load_pretrained(cfg, *, dtype=jnp.float32) -> Pretrained:
    """Build the `Pretrained` a sampling config describes (its `pretrained` and `schedule` fields).

    Validates everything (files present, checksums, kinds) before any compilation.
    """
    pcfg = cfg.pretrained
    check_files(pcfg)
    predictions.check_kind(pcfg.kind, "config.pretrained.kind")
    if pcfg.time_input not in predictions.TIME_INPUTS:
        raise ValueError(
            f"config.pretrained.time_input={pcfg.time_input!r}; valid: {predictions.TIME_INPUTS}"
        )
    net, info = api.load_module(pcfg.denoiser.path, dtype=dtype)
    mcfg = info.config
    if info.kind != "model" or mcfg.get("name") not in ("dit", "unet"):
        raise ValueError(
            f"{pcfg.denoiser.path}: holds a {info.kind}/{mcfg.get('name')}, not a DiT or U-Net denoiser"
        )
    channels = mcfg.in_channels
    shape = (mcfg.image_size, mcfg.image_size, channels)
    graphdef, params = nnx.split(net)
    denoiser = predictions.make_denoiser(
        _Net(graphdef, channels), _schedule(cfg), pcfg.kind, time_input=pcfg.time_input, params=params
    )
    sha = {"denoiser": info.sha256}
    decode = None
    ae = pcfg.get("autoencoder")
    if ae is not None and ae.get("path"):
        vae, vinfo = api.load_module(ae.path, dtype=dtype)
        if vinfo.config.get("name") != "autoencoder" or vinfo.config.z_channels != channels:
            raise ValueError(
                f"{ae.path}: autoencoder with {vinfo.config.get('z_channels')} latent channels does not fit the "
                f"denoiser's {channels}"
            )
        scale = pcfg.get("latent_scale") or vinfo.extra.get("latent_scale", 1.0)
        shift = pcfg.get("latent_shift")
        shift = vinfo.extra.get("latent_shift", 0.0) if shift is None else shift
        vgraph, vparams = nnx.split(vae)
        decode = functools.partial(_decode, vgraph, float(scale), float(shift), vparams)
        sha["autoencoder"] = vinfo.sha256
    return Pretrained(denoiser, shape, decode, int(mcfg.get("num_classes", 0) or 0), sha)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _decode(graphdef, scale: float, shift: float, params, z):
    """z (diffusion space) [B, h, w, c] -> images [B, H, W, C]: vae.decode(z / scale + shift)
    (Rombach et al. 2022, Sec. 4.3.2)."""
    return nnx.merge(graphdef, params).decode(z / scale + shift)


def _kw(c) -> dict:
    return dict(c.to_dict()) if hasattr(c, "to_dict") else dict(c or {})


def init_source(pcfg):
    """The engine's initial-state source for `pretrained.init_noise` (default 'marginal': the published
    samplers' x_T = eps; see `samplers.seeds.GaussianSource`). ValueError naming the field otherwise."""
    from diffusion_jax.samplers import seeds

    value = pcfg.get("init_noise", "marginal")
    if value not in seeds.GAUSSIAN_SCALES:
        raise ValueError(f"config.pretrained.init_noise={value!r}; valid: {list(seeds.GAUSSIAN_SCALES)}")
    return seeds.GaussianSource(value)


def make_plan(cfg, pre: Pretrained | None = None):
    """The sampling engine's `Plan` for a pretrained config (`configs/pretrained/*`), with
    `plan.decode` set for latent models. Labels / guidance work as for a class-conditional run (null
    label = num_classes, the learned null class of DiT). Everything is validated before compiling.
    `pre`: an already loaded `load_pretrained(cfg)` (e.g. to build many plans of one model)."""
    import ml_collections

    from diffusion_jax.training import sampling

    source = init_source(cfg.pretrained)
    pre = pre or load_pretrained(cfg, dtype=jnp.dtype(cfg.dtype))
    c = cfg.conditioning
    spec = sampling.SamplingSpec(
        sampler=cfg.sampler.name, sampler_kwargs=_kw(cfg.sampler.kwargs), grid=cfg.grid.name,
        num_steps=cfg.grid.num_steps, grid_kwargs=_kw(cfg.grid.kwargs),
        guidance_scale=float(c.guidance_scale if c.guidance_scale is not None else 1.0),
        base_seed=int(cfg.base_seed or 0), chunk_size=int(cfg.chunk_size or 16), dtype=cfg.dtype or "float32",
        labels=c.labels or "", caption=c.caption or "",
    )  # fmt: skip
    run_like = ml_collections.ConfigDict(
        {"data": {}, "model": {"num_classes": pre.num_classes}, "objective": {"null_label": -1}}
    )
    weights = "pretrained:" + pre.sha256["denoiser"][:12]
    plan = sampling.make_plan(run_like, pre.denoiser, pre.shape, spec, weights=weights)
    plan.decode = pre.decode
    plan.source = None if source.scale == "sigma" else source  # None: the engine's default draw
    plan.meta["source"] = source.name
    plan.meta["pretrained"] = os.path.basename(cfg.pretrained.denoiser.path)
    return plan
