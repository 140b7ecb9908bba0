"""Data: 2-D toy samplers, the local Fashion-MNIST TFDS builder, grain pipelines and latent caches.

Modules (import them directly; importing registers nothing, not even with TFDS):
``toy2d`` (pinned 2-D toy distributions), ``fashion_mnist`` (TFDS builder from Debian's files),
``transforms`` (dequantization, scaling, flips, resizing), ``pipeline`` (``make_iterator``,
``default_data_config``, ``example_spec``), ``latents`` (``cache_latents`` / ``LatentSource``).
"""
