"""Text encoders: our CLIP text transformer and T5 encoder against transformers' CLIPTextModel and
T5EncoderModel (random weights, float32; relative error max|d| / max|ref| <= 1e-4), and the
parameter counts of the published configs (SD 1.x's CLIP ViT-L/14 text encoder, T5 v1.1 XXL)."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from diffusion_jax import convert  # noqa: E402
from diffusion_jax.convert import common, text  # noqa: E402
from diffusion_jax.models import text_encoders  # noqa: E402
from diffusion_jax.models.layers import count_params  # noqa: E402
from tests.convert_helpers import meta_count, randomize, rel_err  # noqa: E402

CLIP_SD1 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2)  # fmt: skip
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu")  # fmt: skip


def _ids_mask(vocab, eos):
    ids = np.array([[5, 17, 33, 9, eos, 0, 0, 0], [7, 3, 60, 21, 44, 11, 29, eos]], np.int64) % vocab
    ids[0, 4], ids[1, 7] = eos, eos
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8], np.int64)
    return ids, mask


def _folder(tmp_path, model):
    model.save_pretrained(str(tmp_path))
    return str(tmp_path)


@pytest.mark.parametrize("act,eos", [("quick_gelu", 2), ("gelu", 99)])
def test_clip_text_parity(tmp_path, act, eos):
    cfg = transformers.CLIPTextConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=16, hidden_act=act,
                                      eos_token_id=eos, bos_token_id=1, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.CLIPTextModel(cfg).eval()
    randomize(ref, 0, scale=0.1)
    out = str(tmp_path / "clip.safetensors")
    convert.convert("clip_text", _folder(tmp_path / "src", ref), out)
    model, info = convert.load_module(out)
    assert info.kind == "clip_text"
    ids, mask = _ids_mask(100, 99 if eos == 99 else 98)  # eos == 2: pooled at the arg-max id
    with torch.no_grad():
        r = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    hid, pooled = model(jnp.asarray(ids), jnp.asarray(mask))
    valid = mask.astype(bool)
    e1 = rel_err(np.asarray(hid)[valid], r.last_hidden_state.numpy()[valid])
    e2 = rel_err(pooled, r.pooler_output.numpy())
    print(f"CLIPTextModel ({act}, eos {eos}) max relative error: hidden {e1:.2e}, pooled {e2:.2e}")
    assert max(e1, e2) <= 1e-4
    if eos == 2:  # the embed command writes what data.embeddings_path reads (per-class rows)
        from diffusion_jax.convert.__main__ import main
        from diffusion_jax.data.text import load_npy_embeddings

        np.save(tmp_path / "ids.npy", ids)
        np.save(tmp_path / "mask.npy", mask.astype(bool))
        args = ["embed", out, "--ids", str(tmp_path / "ids.npy"), "--mask", str(tmp_path / "mask.npy")]
        assert main([*args, "--out", str(tmp_path / "emb.npy")]) == 0
        emb, m = load_npy_embeddings(tmp_path / "emb.npy", tmp_path / "mask.npy")
        assert emb.shape == (2, 8, 64) and np.array_equal(m, valid)
        assert rel_err(emb[valid], r.last_hidden_state.numpy()[valid]) <= 1e-4


@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_t5_encoder_parity(tmp_path, ff):
    cfg = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                feed_forward_proj=ff, relative_attention_num_buckets=8,
                                relative_attention_max_distance=16)  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.T5EncoderModel(cfg).eval()
    randomize(ref, 1, scale=0.1)
    out = str(tmp_path / "t5.safetensors")
    convert.convert("t5_encoder", _folder(tmp_path / "src", ref), out)
    model, _ = convert.load_module(out)
    ids, mask = _ids_mask(100, 1)
    with torch.no_grad():
        want = ref(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
        ).last_hidden_state.numpy()
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    valid = mask.astype(bool)
    err = rel_err(got[valid], want[valid])
    print(f"T5EncoderModel ({ff}) max relative error {err:.2e}")
    assert err <= 1e-4


def test_t5_buckets_long_sequence():
    """All 32 buckets (128 max distance) against transformers' own bucketing at length 300."""
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
    want = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert np.array_equal(text_encoders.t5_relative_buckets(300, 300, 32, 128), want.numpy())


def test_param_counts_published_configs():
    ours = count_params(
        nnx.eval_shape(lambda: text_encoders.CLIPTextModel(text.clip_config(CLIP_SD1), rngs=nnx.Rngs(0)))
    )
    ref = meta_count(lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_SD1)))
    t5 = count_params(
        nnx.eval_shape(lambda: text_encoders.T5Encoder(text.t5_config(T5_XXL), rngs=nnx.Rngs(0)))
    )
    t5_ref = meta_count(lambda: transformers.T5EncoderModel(transformers.T5Config(**T5_XXL)))
    print(
        f"CLIP ViT-L/14 text: ours {ours:,}, transformers {ref:,}; T5 v1.1 XXL encoder: ours {t5:,}, transformers {t5_ref:,}"
    )
    assert ours == ref == 123_060_480
    assert t5 == t5_ref


def test_tied_embeddings_must_agree():
    cfg = transformers.T5Config(vocab_size=10, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    sd = {k: v.numpy().copy() for k, v in transformers.T5EncoderModel(cfg).state_dict().items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"] + 1
    with pytest.raises(common.ConversionError, match="tied"):
        text.t5_from_transformers(cfg.to_dict(), sd)
