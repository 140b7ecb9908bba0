"""DiT (Peebles & Xie 2023) weights: the official `.pt` state dict and diffusers' folder layout.

Official layout (facebookresearch/DiT `models.py`, checkpoints `DiT-XL-2-256x256.pt` /
`DiT-XL-2-512x512.pt`): `x_embedder.proj`, `pos_embed` [1, T, D] (fixed sin-cos, stored),
`t_embedder.mlp.{0,2}`, `y_embedder.embedding_table` (num_classes + 1 rows: the last is the learned
null class), `blocks.i.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}`,
`final_layer.{adaLN_modulation.1, linear}`.

diffusers layout (`DiTTransformer2DModel`, folder with `config.json` and
`diffusion_pytorch_model.safetensors`; a pipeline folder's `transformer/`): `pos_embed.proj`,
`transformer_blocks.i.{norm1.linear, attn1.to_{q,k,v}, attn1.to_out.0, ff.net.0.proj, ff.net.2}`,
`proj_out_{1,2}`, and the timestep / class embedders repeated in every block as
`transformer_blocks.i.norm1.emb.*` (DiT-XL/2: 749,826,464 parameters against 675,129,632 in the
official layout). The copies of published weights are identical; conversion checks that every block
holds the same embedders as block 0 and keeps one, refusing (naming the block) when they differ.
diffusers' network also differs slightly: timestep frequencies 1e4^(-k/(half-1)) and LayerNorm eps
`norm_eps` before the MLP; the converted config sets `timestep_freq_shift=1` and `mlp_norm_eps` so
our DiT computes what diffusers computes.

Our qkv kernel is head-major, [D, 3, heads, D/heads] (`models.dit.HeadsQKV`, for tensor
parallelism): the published [3D, D] weight (official) or the three [D, D] q / k / v weights
(diffusers) are transposed, concatenated and reshaped; export reverses it bitwise.

With learn_sigma (out_channels = 2 * in_channels) the last in_channels output channels are the
variance interpolation of Nichol & Dhariwal 2021; deterministic samplers use the first half
(`models.dit` keeps them; `convert.pretrained` drops them when building the denoiser).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from diffusion_jax.convert import common as C
from diffusion_jax.models.dit import sincos_pos_embed_2d

HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}  # DiT Table 1 (S, B, L, XL)
EMB_KEYS = (
    "norm1.emb.timestep_embedder.linear_1.weight",
    "norm1.emb.timestep_embedder.linear_1.bias",
    "norm1.emb.timestep_embedder.linear_2.weight",
    "norm1.emb.timestep_embedder.linear_2.bias",
    "norm1.emb.class_embedder.embedding_table.weight",
)


def _heads(cfg) -> tuple[int, int, int]:
    """Our qkv output axes (3, heads, head_dim): the published [3D, D] weight's rows are (q|k|v, head,
    channel) in that order, so the head-major layout of `models.dit.HeadsQKV` is a reshape."""
    return (3, cfg.num_heads, cfg.hidden_size // cfg.num_heads)


def official_rules(cfg) -> list[C.Rule]:
    """Rules between our DiT state and the official `models.py` state dict."""
    r = C.conv("x_embed", "x_embedder.proj") + [C.rule("pos_embed", "pos_embed", "unbatch")]
    r += C.linear("t_fc1", "t_embedder.mlp.0") + C.linear("t_fc2", "t_embedder.mlp.2")
    if cfg.num_classes:
        r.append(C.rule("y_embed.table.embedding", "y_embedder.embedding_table.weight"))
    for i in range(cfg.depth):
        b = f"blocks.{i}"
        r += C.linear(f"{b}.attn.qkv", f"{b}.attn.qkv", out_shape=_heads(cfg))
        r += C.linear(f"{b}.attn.proj", f"{b}.attn.proj")
        r += C.linear(f"{b}.fc1", f"{b}.mlp.fc1") + C.linear(f"{b}.fc2", f"{b}.mlp.fc2")
        r += C.linear(f"{b}.ada", f"{b}.adaLN_modulation.1")
    r += C.linear("ada_f", "final_layer.adaLN_modulation.1") + C.linear("out", "final_layer.linear")
    return r


def diffusers_rules(cfg) -> list[C.Rule]:
    """Rules between our DiT state and diffusers' state dict with ONE copy of the embedders (block 0's)."""
    e = "transformer_blocks.0.norm1.emb"
    r = C.conv("x_embed", "pos_embed.proj")
    r += C.linear("t_fc1", f"{e}.timestep_embedder.linear_1") + C.linear(
        "t_fc2", f"{e}.timestep_embedder.linear_2"
    )
    if cfg.num_classes:
        r.append(C.rule("y_embed.table.embedding", f"{e}.class_embedder.embedding_table.weight"))
    for i in range(cfg.depth):
        b, t = f"blocks.{i}", f"transformer_blocks.{i}"
        qkv = (f"{t}.attn1.to_q", f"{t}.attn1.to_k", f"{t}.attn1.to_v")
        r += C.fused_qkv(f"{b}.attn.qkv", qkv, out_shape=_heads(cfg))
        r += C.linear(f"{b}.attn.proj", f"{t}.attn1.to_out.0")
        r += C.linear(f"{b}.fc1", f"{t}.ff.net.0.proj") + C.linear(f"{b}.fc2", f"{t}.ff.net.2")
        r += C.linear(f"{b}.ada", f"{t}.norm1.linear")
    r += C.linear("ada_f", "proj_out_1") + C.linear("out", "proj_out_2")
    return r


def dedupe_embedders(sd: dict[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
    """Drop blocks 1..depth-1's embedder copies after checking each equals block 0's (bitwise).

    Raises ConversionError naming the first block and key whose copy differs.
    """
    out = dict(sd)
    for i in range(1, depth):
        for k in EMB_KEYS:
            ki, k0 = f"transformer_blocks.{i}.{k}", f"transformer_blocks.0.{k}"
            if ki not in out or k0 not in out:
                continue  # reported as missing by the strict key check
            a, b = np.asarray(out[ki]), np.asarray(out[k0])
            if a.shape != b.shape or not np.array_equal(a, b):
                diff = "shape" if a.shape != b.shape else f"max |diff| {np.max(np.abs(a - b)):.3g}"
                raise C.ConversionError(
                    f"diffusers DiT: transformer_blocks.{i} holds a different copy of the shared embedder "
                    f"({ki} vs {k0}: {diff}); published weights repeat one embedder in every block, "
                    "so this file cannot be expressed as one DiT"
                )
            del out[ki]
    return out


def repeat_embedders(sd: dict[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
    """The inverse of `dedupe_embedders`: copy block 0's embedders into every block."""
    out = dict(sd)
    for i in range(1, depth):
        for k in EMB_KEYS:
            if f"transformer_blocks.0.{k}" in out:
                out[f"transformer_blocks.{i}.{k}"] = out[f"transformer_blocks.0.{k}"].copy()
    return out


def _base_config(**kw) -> ml_collections.ConfigDict:
    from diffusion_jax.models import DEFAULTS

    d = dict(DEFAULTS["dit"], name="dit", text_encoder=None)
    d.update(kw)
    return ml_collections.ConfigDict(d)


def official_config(sd: dict[str, np.ndarray], *, num_heads: int | None = None) -> ml_collections.ConfigDict:
    """Infer the DiT config from an official state dict's shapes (heads from Table 1 unless given)."""
    need = ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight")
    miss = [k for k in need if k not in sd]
    if miss:
        raise C.ConversionError(f"official DiT: keys {miss} are missing; is this a DiT state dict?")
    d, cin, p, _ = sd["x_embedder.proj.weight"].shape
    tokens = sd["pos_embed"].shape[1]
    grid = int(round(tokens**0.5))
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    heads = num_heads or HEADS_BY_WIDTH.get(d)
    if heads is None:
        raise C.ConversionError(f"official DiT: width {d} is not a Table 1 size; pass num_heads")
    out = sd["final_layer.linear.weight"].shape[0] // (p * p)
    rows = (
        sd["y_embedder.embedding_table.weight"].shape[0] if "y_embedder.embedding_table.weight" in sd else 0
    )
    return _base_config(
        image_size=grid * p, in_channels=cin, out_channels=out, patch_size=p, hidden_size=d, depth=depth,
        num_heads=heads, learn_sigma=out == 2 * cin, num_classes=max(rows - 1, 0),
        frequency_embedding_size=sd["t_embedder.mlp.0.weight"].shape[1] if "t_embedder.mlp.0.weight" in sd else 256,
        mlp_ratio=(sd["blocks.0.mlp.fc1.weight"].shape[0] / d) if "blocks.0.mlp.fc1.weight" in sd else 4.0,
    )  # fmt: skip


def official_config_for(name: str = "XL/2", resolution: int = 256) -> ml_collections.ConfigDict:
    """Our config of a published DiT: `name` SIZE/PATCH (Table 1), ImageNet `resolution` 256 or 512
    (latents resolution / 8 with 4 channels from the SD VAE), 1000 classes + null, learned sigma."""
    from diffusion_jax.models.dit import SIZES

    size, _, patch = name.partition("/")
    if size not in SIZES or patch not in ("2", "4", "8") or resolution not in (256, 512):
        raise ValueError(
            f"DiT {name!r} at {resolution}: SIZE in {sorted(SIZES)}, PATCH in 2/4/8, resolution 256/512"
        )
    depth, d, heads = SIZES[size]
    return _base_config(image_size=resolution // 8, in_channels=4, out_channels=8, patch_size=int(patch),
                        hidden_size=d, depth=depth, num_heads=heads, learn_sigma=True, num_classes=1000)  # fmt: skip


DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


def diffusers_config(cfg_json: dict) -> ml_collections.ConfigDict:
    """Our DiT config from a diffusers `config.json` (DiTTransformer2DModel / ada_norm_zero Transformer2DModel)."""
    cls = cfg_json.get("_class_name", "DiTTransformer2DModel")
    if cls not in DIFFUSERS_CLASSES or cfg_json.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise C.ConversionError(
            f"diffusers DiT: config is {cls} with norm_type={cfg_json.get('norm_type')!r}; "
            f"expected one of {DIFFUSERS_CLASSES} with norm_type='ada_norm_zero'"
        )
    heads, hd = cfg_json.get("num_attention_heads", 16), cfg_json.get("attention_head_dim", 72)
    cin = cfg_json.get("in_channels", 4)
    out = cfg_json.get("out_channels") or cin
    return _base_config(
        image_size=cfg_json.get("sample_size", 32), in_channels=cin, out_channels=out,
        patch_size=cfg_json.get("patch_size", 2), hidden_size=heads * hd, depth=cfg_json.get("num_layers", 28),
        num_heads=heads, learn_sigma=out == 2 * cin, num_classes=cfg_json.get("num_embeds_ada_norm", 1000),
        timestep_freq_shift=1, mlp_norm_eps=float(cfg_json.get("norm_eps", 1e-5)),
    )  # fmt: skip


def _abstract_shapes(cfg):
    from flax import nnx

    from diffusion_jax.models import build_model

    return C.flat_shapes(nnx.state(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))))


def from_official(sd: dict[str, np.ndarray], *, num_heads=None, allow_partial=False):
    """Official state dict -> (config, {our key: array}, problems)."""
    cfg = official_config(sd, num_heads=num_heads)
    params, problems = C.apply_rules(
        official_rules(cfg), sd, _abstract_shapes(cfg), what="official DiT", allow_partial=allow_partial
    )
    return cfg, params, problems


def from_diffusers(cfg_json: dict, sd: dict[str, np.ndarray], *, allow_partial=False):
    """diffusers config.json dict + state dict -> (config, {our key: array}, problems)."""
    cfg = diffusers_config(cfg_json)
    sd = dedupe_embedders(sd, cfg.depth)
    params, problems = C.apply_rules(
        diffusers_rules(cfg),
        sd,
        _abstract_shapes(cfg),
        what="diffusers DiT",
        allow_partial=allow_partial,
        computed=("pos_embed",),
    )
    params["pos_embed"] = sincos_pos_embed_2d(cfg.hidden_size, cfg.image_size // cfg.patch_size)
    return cfg, params, problems


def _check_plain(cfg, fields: dict, layout: str, force: bool):
    bad = {k: cfg.get(k, v) for k, v in fields.items() if cfg.get(k, v) != v}
    if bad and not force:
        raise ValueError(
            f"DiT export to the {layout} layout: model fields {bad} differ from what that layout computes "
            f"({fields}); the weights would run a different network there (force=True to export anyway)"
        )
    if cfg.get("context_dim", 0):
        raise ValueError(
            f"DiT export to the {layout} layout: model.context_dim > 0 (cross-attention) is not expressible"
        )


def to_official(cfg, params: dict[str, np.ndarray], *, force: bool = False) -> dict[str, np.ndarray]:
    """Our DiT -> official state dict (inverse of `from_official`)."""
    _check_plain(cfg, {"timestep_freq_shift": 0, "mlp_norm_eps": 1e-6}, "official", force)
    return C.export_rules(official_rules(cfg), params)


def to_diffusers(cfg, params: dict[str, np.ndarray], *, force: bool = False) -> tuple[dict, dict]:
    """Our DiT -> (diffusers config.json dict, state dict with the embedders repeated per block)."""
    _check_plain(cfg, {"timestep_freq_shift": 1}, "diffusers", force)
    d = cfg.hidden_size
    cfg_json = {
        "_class_name": "DiTTransformer2DModel", "num_attention_heads": cfg.num_heads,
        "attention_head_dim": d // cfg.num_heads, "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels or (2 * cfg.in_channels if cfg.learn_sigma else cfg.in_channels),
        "num_layers": cfg.depth, "sample_size": cfg.image_size, "patch_size": cfg.patch_size,
        "num_embeds_ada_norm": cfg.num_classes, "norm_type": "ada_norm_zero",
        "norm_eps": float(cfg.get("mlp_norm_eps", 1e-6)),
    }  # fmt: skip
    if cfg.mlp_ratio != 4.0 or cfg.frequency_embedding_size != 256 or not cfg.num_classes:
        raise ValueError(
            "DiT export to diffusers needs mlp_ratio=4, frequency_embedding_size=256, num_classes>0"
        )
    rest = {k: v for k, v in params.items() if k != "pos_embed"}  # diffusers recomputes the table
    return cfg_json, repeat_embedders(C.export_rules(diffusers_rules(cfg), rest), cfg.depth)


def read_diffusers_folder(folder: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A diffusers model folder (or a pipeline folder with `transformer/`) -> (config dict, state dict)."""
    from diffusion_jax.convert import files

    return files.read_diffusers_folder(folder, subfolder="transformer")


def write_diffusers_folder(folder: str, cfg_json: dict, sd: dict[str, np.ndarray]) -> None:
    from diffusion_jax.convert import files

    files.write_diffusers_folder(folder, cfg_json, sd)


__all__ = [
    "dedupe_embedders",
    "diffusers_config",
    "from_diffusers",
    "from_official",
    "official_config",
    "repeat_embedders",
    "to_diffusers",
    "to_official",
]
