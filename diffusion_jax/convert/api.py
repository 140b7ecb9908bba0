"""Python API of the converters: published files -> our converted file -> NNX module, and back.

    convert("dit", "DiT-XL-2-256x256.pt", "dit_xl2_256.safetensors")        # official layout
    convert("dit", "DiT-XL-2-256/", "dit_xl2_256.safetensors")               # diffusers folder
    model, info = load_module("dit_xl2_256.safetensors")                     # checksum verified
    export("dit_xl2_256.safetensors", "out_dir", layout="diffusers")         # back to PyTorch

Nothing is written before the source has been read and checked completely; a partial load
(missing / unexpected / mis-shaped keys) is refused unless `allow_partial=True`, in which case the
unmatched parameters keep their initial values (seed 0) and the problems are recorded in the file.
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from diffusion_jax.convert import common as C
from diffusion_jax.convert import files

LAYOUTS = {
    "dit": ("official", "diffusers"),
    "unet": ("diffusers",),
    "vae": ("diffusers",),
    "clip_text": ("transformers",),
    "t5_encoder": ("transformers",),
}
SUBFOLDERS = {
    "dit": "transformer",
    "unet": "unet",
    "vae": "vae",
    "clip_text": "text_encoder",
    "t5_encoder": "text_encoder",
}


def _detect_layout(model: str, src: str, layout: str | None) -> str:
    if model not in LAYOUTS:
        raise ValueError(f"model={model!r} unknown; valid: {sorted(LAYOUTS)}")
    if layout is None:
        layout = LAYOUTS[model][-1] if os.path.isdir(src) else LAYOUTS[model][0]
    if layout not in LAYOUTS[model]:
        raise ValueError(f"layout={layout!r} is not valid for {model}; valid: {LAYOUTS[model]}")
    if layout == "official" and os.path.isdir(src):
        raise ValueError(f"{src} is a folder; the official {model} layout is a single .pt file")
    if layout != "official" and not os.path.isdir(src):
        raise ValueError(f"{src} is not a folder; the {layout} layout is a folder with config.json")
    return layout


def _import(model: str, layout: str, src: str, *, allow_partial: bool, **kw):
    """-> (kind, config, params, problems, extra)."""
    if model == "dit":
        from diffusion_jax.convert import dit

        if layout == "official":
            cfg, p, probs = dit.from_official(files.read_torch(src), allow_partial=allow_partial, **kw)
        else:
            cj, sd = files.read_model_folder(src, subfolder=SUBFOLDERS[model])
            cfg, p, probs = dit.from_diffusers(cj, sd, allow_partial=allow_partial)
        return "model", cfg, p, probs, {}
    if model == "unet":
        from diffusion_jax.convert import unet

        cj, sd = files.read_model_folder(src, subfolder=SUBFOLDERS[model])
        cfg, p, probs = unet.from_diffusers(cj, sd, allow_partial=allow_partial)
        return "model", cfg, p, probs, {}
    if model == "vae":
        from diffusion_jax.convert import vae

        cj, sd = files.read_model_folder(src, subfolder=SUBFOLDERS[model])
        cfg, p, probs, extra = vae.from_diffusers(cj, sd, allow_partial=allow_partial)
        return "model", cfg, p, probs, extra
    from diffusion_jax.convert import text

    cj, sd = files.read_model_folder(src, subfolder=SUBFOLDERS[model])
    fn = text.clip_from_transformers if model == "clip_text" else text.t5_from_transformers
    cfg, p, probs = fn(cj, sd, allow_partial=allow_partial)
    return model, cfg, p, probs, {}


def build_module(kind: str, cfg, *, rngs: nnx.Rngs | None = None, abstract: bool = False) -> nnx.Module:
    """The NNX module a converted file of `kind` describes (random init, or abstract shapes)."""
    if kind == "model":
        from diffusion_jax.models import build_model as make
    elif kind in ("clip_text", "t5_encoder"):
        from diffusion_jax.models import text_encoders

        make = text_encoders.CLIPTextModel if kind == "clip_text" else text_encoders.T5Encoder
    else:
        raise ValueError(f"converted kind={kind!r} unknown; valid: model, clip_text, t5_encoder")
    fn = lambda: make(cfg, rngs=rngs or nnx.Rngs(0))  # noqa: E731
    return nnx.eval_shape(fn) if abstract else fn()


def convert(
    model: str, src: str, out: str, *, layout: str | None = None, allow_partial: bool = False, **kw
) -> C.Converted:
    """Convert the published `src` (file or folder) of `model` to our file `out` (.safetensors).

    model: dit | unet | vae | clip_text | t5_encoder. layout: None (folder -> diffusers /
    transformers, file -> official) or one of `LAYOUTS[model]`. Extra keywords go to the layout's
    reader (DiT official: `num_heads`). Returns what was written (as `read_converted` gives it).
    """
    if not str(out).endswith(".safetensors"):
        raise ValueError(f"out={out!r} must end in .safetensors")
    if not os.path.exists(src):
        raise FileNotFoundError(f"source {src!r} does not exist")
    layout = _detect_layout(model, src, layout)
    kind, cfg, params, problems, extra = _import(model, layout, src, allow_partial=allow_partial, **kw)
    if problems:  # allow_partial: complete from a seed-0 initialisation
        init = C.state_to_flat(nnx.state(build_module(kind, cfg)))
        params = {**init, **params}
    extra = dict(extra, source=os.path.abspath(src), source_layout=layout, model=model, partial=problems)
    if os.path.isfile(src):
        extra["source_sha256"] = C.sha256_file(src)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    C.save_converted(out, kind, cfg, params, extra)
    return C.read_converted(out)


def load_module(path: str, *, verify: bool = True, dtype=None) -> tuple[nnx.Module, C.Converted]:
    """A converted file -> (NNX module with its weights, the file's `Converted` record)."""
    info = C.read_converted(path, verify=verify)
    abstract = build_module(info.kind, info.config, abstract=True)
    graphdef, state = nnx.split(abstract)
    kw = {} if dtype is None else {"dtype": dtype}
    return nnx.merge(graphdef, C.fill_state(state, info.params, **kw)), info


def export(path: str, out: str, *, layout: str | None = None, force: bool = False) -> str:
    """Write a converted (or our own) model back in a published layout; returns the written path.

    DiT: layout 'official' (out = a .pt file, needs torch) or 'diffusers' (out = a folder);
    U-Net / VAE: 'diffusers' (folder). The weights round-trip bitwise.
    """
    info = C.read_converted(path)
    model = info.extra.get("model") or _model_of(info)
    layout = layout or ("official" if model == "dit" and str(out).endswith(".pt") else LAYOUTS[model][-1])
    if layout not in LAYOUTS[model]:
        raise ValueError(f"layout={layout!r} is not valid for {model}; valid: {LAYOUTS[model]}")
    params = {k: np.asarray(v) for k, v in info.params.items()}
    if model == "dit":
        from diffusion_jax.convert import dit

        if layout == "official":
            files.write_torch(out, dit.to_official(info.config, params, force=force))
            return out
        cj, sd = dit.to_diffusers(info.config, params, force=force)
    elif model == "unet":
        from diffusion_jax.convert import unet

        cj, sd = unet.to_diffusers(info.config, params)
    elif model == "vae":
        from diffusion_jax.convert import vae

        cj, sd = vae.to_diffusers(info.config, params, info.extra)
    else:
        raise ValueError(f"export of {model} is not supported (DiT, U-Net and VAE are)")
    files.write_diffusers_folder(out, cj, sd)
    return out


def _model_of(info: C.Converted) -> str:
    names = {"dit": "dit", "unet": "unet", "autoencoder": "vae"}
    name = info.config.get("name")
    if name not in names:
        raise ValueError(f"cannot export a {info.kind} / {name} model")
    return names[name]


def save_model(out: str, module: nnx.Module, cfg, *, extra: dict | None = None) -> str:
    """Save one of our own models (e.g. trained here) as a converted file, ready for `export`."""
    from diffusion_jax.models import complete_config

    full = complete_config(cfg)
    params = C.state_to_flat(nnx.state(module))
    return C.save_converted(
        out, "model", full, params, dict(extra or {}, model=_model_of(C.Converted("model", full, {}, {}, "")))
    )
