"""transformers `CLIPTextModel` / `T5EncoderModel` folders -> our `models.text_encoders` modules.

CLIP keys (`text_model.` prefix in published files, none in transformers >= 5's own state dict):
`embeddings.{token,position}_embedding`, `encoder.layers.i.{self_attn.{q,k,v,out}_proj, layer_norm1,
mlp.fc1, mlp.fc2, layer_norm2}`, `final_layer_norm`; a stored `embeddings.position_ids` buffer
(older files) is checked to be 0..L-1 and dropped.
T5 keys: `shared` (tied to `encoder.embed_tokens`: either or both, equal), `encoder.block.i.layer.0.
SelfAttention.{q,k,v,o}`, `encoder.block.0.layer.0.SelfAttention.relative_attention_bias`,
`encoder.block.i.layer.{0,1}.layer_norm`, `encoder.block.i.layer.1.DenseReluDense.{wi | wi_0, wi_1, wo}`,
`encoder.final_layer_norm`.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from diffusion_jax.convert import common as C


def clip_config(cj: dict) -> ml_collections.ConfigDict:
    from diffusion_jax.models.text_encoders import CLIP_DEFAULTS

    cj = cj.get("text_config", cj)  # a full CLIPModel config holds the text part
    return ml_collections.ConfigDict({k: cj.get(k, v) for k, v in CLIP_DEFAULTS.items()})


def t5_config(cj: dict) -> ml_collections.ConfigDict:
    from diffusion_jax.models.text_encoders import T5_DEFAULTS

    return ml_collections.ConfigDict({k: cj.get(k, v) for k, v in T5_DEFAULTS.items()})


def clip_rules(cfg) -> list[C.Rule]:
    r = [C.rule("tok.embedding", "embeddings.token_embedding.weight"),
         C.rule("pos.embedding", "embeddings.position_embedding.weight")]  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        o, t = f"layers.{i}", f"encoder.layers.{i}"
        for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            r += C.linear(f"{o}.{a}", f"{t}.self_attn.{b}")
        r += C.norm(f"{o}.ln1", f"{t}.layer_norm1") + C.norm(f"{o}.ln2", f"{t}.layer_norm2")
        r += C.linear(f"{o}.fc1", f"{t}.mlp.fc1") + C.linear(f"{o}.fc2", f"{t}.mlp.fc2")
    return r + C.norm("ln_f", "final_layer_norm")


def t5_rules(cfg) -> list[C.Rule]:
    r = [C.rule("tok.embedding", "shared.weight"),
         C.rule("rel_bias.embedding", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")]  # fmt: skip
    gated = cfg.feed_forward_proj.startswith("gated-")
    for i in range(cfg.num_layers):
        o, t = f"layers.{i}", f"encoder.block.{i}.layer"
        for a in "qkvo":
            r += C.linear(f"{o}.{a}", f"{t}.0.SelfAttention.{a}", bias=False)
        r += [
            C.rule(f"{o}.ln1.scale", f"{t}.0.layer_norm.weight"),
            C.rule(f"{o}.ln2.scale", f"{t}.1.layer_norm.weight"),
        ]
        ff = f"{t}.1.DenseReluDense"
        if gated:
            r += C.linear(f"{o}.wi", f"{ff}.wi_0", bias=False) + C.linear(
                f"{o}.wi_gate", f"{ff}.wi_1", bias=False
            )
        else:
            r += C.linear(f"{o}.wi", f"{ff}.wi", bias=False)
        r += C.linear(f"{o}.wo", f"{ff}.wo", bias=False)
    return r + [C.rule("ln_f.scale", "encoder.final_layer_norm.weight")]


def _shapes(kind, cfg):
    from flax import nnx

    from diffusion_jax.models import text_encoders as T

    cls = T.CLIPTextModel if kind == "clip_text" else T.T5Encoder
    return C.flat_shapes(nnx.state(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))))


def clip_from_transformers(cj: dict, sd: dict[str, np.ndarray], *, allow_partial: bool = False):
    """CLIPTextModel config.json + state dict -> (config, {our key: array}, problems)."""
    cfg = clip_config(cj)
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    pid = sd.pop("embeddings.position_ids", None)
    if pid is not None and not np.array_equal(np.ravel(pid), np.arange(np.size(pid))):
        raise C.ConversionError(
            "CLIPTextModel: embeddings.position_ids is not 0..L-1; not a standard CLIP text model"
        )
    params, problems = C.apply_rules(
        clip_rules(cfg), sd, _shapes("clip_text", cfg), what="CLIPTextModel", allow_partial=allow_partial
    )
    return cfg, params, problems


def t5_from_transformers(cj: dict, sd: dict[str, np.ndarray], *, allow_partial: bool = False):
    """T5EncoderModel config.json + state dict -> (config, {our key: array}, problems)."""
    cfg = t5_config(cj)
    sd = dict(sd)
    tied = sd.pop("encoder.embed_tokens.weight", None)
    if tied is not None:
        if "shared.weight" in sd and not np.array_equal(sd["shared.weight"], tied):
            raise C.ConversionError(
                "T5EncoderModel: shared.weight and encoder.embed_tokens.weight differ (they are tied)"
            )
        sd.setdefault("shared.weight", tied)
    params, problems = C.apply_rules(
        t5_rules(cfg), sd, _shapes("t5_encoder", cfg), what="T5EncoderModel", allow_partial=allow_partial
    )
    return cfg, params, problems


def embed(encoder_path: str, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Token ids [N, L] (tokenised with the encoder's own tokenizer) -> last hidden states [N, L, E]
    (float32) of a converted CLIP text / T5 encoder file, for `data.embeddings_path` (with `mask` as
    `data.embeddings_mask_path`) so captioned models train on real text embeddings."""
    import jax.numpy as jnp

    from diffusion_jax.convert import api

    model, info = api.load_module(encoder_path)
    if info.kind not in ("clip_text", "t5_encoder"):
        raise ValueError(f"{encoder_path}: holds a {info.kind}, not a CLIP text / T5 encoder")
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be an int array [N, L], got {ids.dtype}{list(ids.shape)}")
    m = None if mask is None else jnp.asarray(np.asarray(mask).astype(np.int32))
    out = model(jnp.asarray(ids), m)
    return np.asarray(out[0] if isinstance(out, tuple) else out, np.float32)
