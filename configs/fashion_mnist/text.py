"""Fashion-MNIST with captions: rectified flow + a trainable byte-level text encoder, no download.

Captions are made on the host from the class names and a small fixed template list
(`diffusion_jax.data.captions.TEMPLATES`, e.g. "a photo of a t-shirt/top"), tokenized to UTF-8
bytes and encoded by a small Transformer (`ByteTextEncoder`) trained jointly with the U-Net, whose
attention blocks cross-attend to it (Rombach et al. 2022, Sec. 3.3). Captions are dropped (the
mask emptied) with probability `objective.label_dropout` = 0.1 for classifier-free guidance
(Ho & Salimans 2022). Everything else is the shared Fashion-MNIST setup (configs/fashion_mnist/common.py).

Variants (`get_config(arg)`):
  None / 'text'  byte captions, text encoder dim 64, depth 2, 4 heads, max_len 40;
  'emb'          precomputed per-label embeddings instead (`data.embeddings_path` must be set, a
                 `.npy` of shape [10, E] or [10, L, E]; `model.context_dim` = E, default 64);
  'text_tiny'    test-sized (8x8 images, text encoder dim 16, depth 1, max_len 24, 2 steps).

Train: python -m diffusion_jax.train --config=configs/fashion_mnist/text.py --workdir=/tmp/fmnist_text
"""

from configs.fashion_mnist import common

VARIANTS = ("text", "emb", "text_tiny")


def get_config(arg=None):
    arg = arg or "text"
    if arg not in VARIANTS:
        raise ValueError(f"fashion_mnist text variant {arg!r} unknown; valid: {list(VARIANTS)}")
    tiny = arg.endswith("tiny")
    cfg = common.make("rf_uniform", "tiny" if tiny else "uncond")
    cfg.objective.label_dropout = 0.1
    if arg == "emb":
        cfg.model.context_dim = 64
        cfg.data.embeddings_path = ""  # set to the per-label .npy (validation names this field)
        return cfg
    cfg.data.captions = "class_template"
    if tiny:
        cfg.model.text_encoder = dict(dim=16, depth=1, num_heads=2, max_len=24)
    else:
        cfg.model.text_encoder = dict(dim=64, depth=2, num_heads=4, max_len=40)
    return cfg
