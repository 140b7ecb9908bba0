"""Text conditioning from class labels, with no download: template captions and per-label embeddings.

Two host-side sources of text conditioning, chosen by data-config fields and applied to each batch
before it goes to the device (`training.build.to_model_batch`):

- ``data.captions = 'class_template'``: every example gets a caption made from its class name and one
  of `TEMPLATES` (drawn per example), tokenized to UTF-8 bytes (`data.text.tokenize_bytes`)
  for the trainable `ByteTextEncoder`: the batch gains ``tokens`` [b, L] int32 and ``tokens_mask``
  [b, L] bool, L = ``model.text_encoder.max_len`` (longer captions are truncated). The template draw
  uses ``default_rng([seed, step, process_index])``, so a resumed run sees the same captions.
- ``data.embeddings_path = 'emb.npy'`` (+ optional ``data.embeddings_mask_path``): precomputed
  embeddings of any external encoder (CLIP, T5, ...), one row per class label, ``[num_classes, E]``
  or ``[num_classes, L, E]`` (`data.text.load_npy_embeddings`); the batch gains
  ``context`` [b, L, E] float32 and ``context_mask`` [b, L] bool looked up by ``label``. One row per
  label keeps the pipeline unchanged; per-example embeddings would need the example index in the batch.

Captions are a stand-in for real ones: with a fixed template set they carry exactly the label's
information, which makes them a clean check that text conditioning learns what labels would.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffusion_jax.data import fashion_mnist

CAPTION_SOURCES = ("", "class_template")

TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "a black and white photo of a {}",
    "a small image of a {}",
    "{}",
)
"""Caption templates; `{}` is the class name (Fashion-MNIST's TFDS names, e.g. 't-shirt/top')."""

CLASS_NAMES = {"fashion_mnist": tuple(n.lower() for n in fashion_mnist.CLASS_NAMES)}
"""Datasets whose class names the templates can use (data.name -> names in label order)."""


def class_captions(labels: np.ndarray, names, rng: np.random.Generator) -> list[str]:
    """One caption per label: a template drawn uniformly from `TEMPLATES`, filled with its class name."""
    which = rng.integers(0, len(TEMPLATES), size=len(labels))
    return [TEMPLATES[w].format(names[int(y)]) for w, y in zip(which, labels, strict=True)]


def caption_tokens(cfg, labels, rng: np.random.Generator | None = None) -> dict:
    """Byte tokens of the template captions of `labels` under `cfg` (data.captions='class_template'):
    {"tokens" [b, L] int32, "tokens_mask" [b, L] bool}. Templates are drawn with `rng`; without one,
    every caption uses the first template (reproducible captions for sampling)."""
    from diffusion_jax.data.text import tokenize_bytes

    names = CLASS_NAMES[cfg.data.name]
    if rng is None:
        texts = [TEMPLATES[0].format(names[int(y)]) for y in labels]
    else:
        texts = class_captions(labels, names, rng)
    tokens, mask = tokenize_bytes(texts, int(cfg.model.text_encoder.get("max_len", 64)))
    return {"tokens": tokens, "tokens_mask": mask}


def make_text_transform(cfg) -> Callable[[dict, int], dict] | None:
    """`fn(batch, step) -> batch` adding text conditioning as the data config asks, or None if it does
    not. Raises ValueError (naming the field) on an inconsistent config; embeddings are loaded here."""
    from diffusion_jax.data.text import load_npy_embeddings

    validate_text_config(cfg)
    d = cfg.data
    captions = d.get("captions", "")
    emb_path = d.get("embeddings_path", "")
    if captions == "class_template":
        seed = int(cfg.seed)

        def add_captions(batch, step):
            import jax

            rng = np.random.default_rng([seed, 0x7E47, int(step), jax.process_index()])
            return {**batch, **caption_tokens(cfg, batch["label"], rng)}

        return add_captions
    if emb_path:
        emb, mask = load_npy_embeddings(emb_path, d.get("embeddings_mask_path", "") or None)
        from diffusion_jax.data.pipeline import TFDS_DATASETS

        n = TFDS_DATASETS[d.name].num_classes if d.source == "tfds" else None
        if n is not None and emb.shape[0] != n:
            raise ValueError(
                f"data.embeddings_path={emb_path!r} has {emb.shape[0]} rows; one per class is needed ({n})"
            )
        ctx_dim = int(cfg.model.get("context_dim", 0))
        if emb.shape[2] != ctx_dim:
            raise ValueError(
                f"data.embeddings_path={emb_path!r} embeds to {emb.shape[2]} dims but "
                f"model.context_dim={ctx_dim}"
            )

        def add_embeddings(batch, step):
            y = np.asarray(batch["label"])
            if y.min() < 0 or y.max() >= emb.shape[0]:
                raise ValueError(f"label outside [0, {emb.shape[0]}) for data.embeddings_path={emb_path!r}")
            return {**batch, "context": emb[y], "context_mask": mask[y]}

        return add_embeddings
    return None


def validate_text_config(cfg) -> None:
    """Check that the text options of `data` and `model` agree (touches no file, compiles nothing).

    captions need a dataset with class names and a model with `text_encoder`; a text encoder needs
    captions (else it would never see any text); embeddings need `model.context_dim` > 0 and no text
    encoder; captions and embeddings exclude each other.
    """
    d, m = cfg.data, cfg.model
    captions = d.get("captions", "")
    emb_path = d.get("embeddings_path", "")
    has_encoder = m.get("text_encoder", None) is not None
    if captions not in CAPTION_SOURCES:
        raise ValueError(f"data.captions={captions!r}; valid: {list(CAPTION_SOURCES)}")
    if captions and emb_path:
        raise ValueError("data.captions and data.embeddings_path are exclusive: set one of them to ''")
    if captions:
        if d.source != "tfds" or d.name not in CLASS_NAMES:
            raise ValueError(
                f"data.captions={captions!r} needs a labelled dataset with class names: data.source='tfds' "
                f"and data.name in {sorted(CLASS_NAMES)} (got {d.source!r}, {d.name!r})"
            )
        if not has_encoder:
            raise ValueError(
                f"data.captions={captions!r} needs a text encoder: set model.text_encoder "
                "(e.g. dict(dim=64, depth=2, num_heads=4, max_len=48))"
            )
    elif has_encoder:
        raise ValueError(
            "model.text_encoder is set but the batches carry no text: set data.captions='class_template'"
        )
    if emb_path:
        if d.source not in ("tfds", "latents"):
            raise ValueError(f"data.embeddings_path is looked up by label; data.source={d.source!r} has none")
        if not int(m.get("context_dim", 0) or 0):
            raise ValueError(
                "data.embeddings_path needs cross-attention: set model.context_dim to the embedding size"
            )
    elif int(m.get("context_dim", 0) or 0) and not has_encoder:
        raise ValueError(
            f"model.context_dim={m.context_dim} (cross-attention) but the batches carry no context: "
            "set data.embeddings_path to a per-label .npy of embeddings (or model.text_encoder + captions)"
        )
    if d.get("embeddings_mask_path", "") and not emb_path:
        raise ValueError("data.embeddings_mask_path is set without data.embeddings_path")
