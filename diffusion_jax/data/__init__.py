"""Data: 2-D toy samplers, the local Fashion-MNIST TFDS builder, grain pipelines and latent caches.

Modules (import them directly; nothing is registered by importing this package):
``toy2d`` (pinned 2-D toy distributions), ``fashion_mnist`` (TFDS builder from Debian's files),
``transforms`` (dequantization, scaling, flips), ``pipeline`` (``make_iterator``), ``latents``
(``cache_latents`` / ``LatentSource``).
"""
