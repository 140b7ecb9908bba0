"""The run's source distribution (t = 1) as an `interpolants.Source`, from its data config.

``data.pair_with`` names the source: ``''`` is the standard normal (the Gaussian paths' source, any
shape); a `toy2d` name is that toy (2-D), with a log-density where one is known in closed form
(``gaussian``: N(0, I_2); ``gmm``: the analytic mixture). Training pairs data with draws of this
source, and every sampling entry point starts from it: sample i's source point is
``source.draw(sample_key_i, shape)``, so a seed fixes it as it fixes the noise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import jax.numpy as jnp

from diffusion_jax import interpolants as I
from diffusion_jax.data import toy2d

GAUSSIAN = I.gaussian_source()


def _toy_log_prob(name: str):
    if name == "gaussian":
        return lambda x: -0.5 * jnp.sum(x**2, axis=-1) - math.log(2.0 * math.pi)
    if name == "gmm":
        from diffusion_jax.analytic import gmm_2d_ring

        return gmm_2d_ring().log_prob
    return None


@functools.cache
def toy_source(name: str) -> I.Source:
    """The toy2d distribution `name` as a source of [2] points (log-density where known). One
    object per name (cached), so jitted programs keyed on the source are reused."""
    return I.sampler_source(name, toy2d.get_toy_sampler(name), _toy_log_prob(name), (2,))


def source_from_config(data_cfg: Mapping) -> I.Source:
    """The source of a run: the standard normal, or the toy named by ``data.pair_with``."""
    get = data_cfg.get if hasattr(data_cfg, "get") else lambda k, d=None: getattr(data_cfg, k, d)
    pair = get("pair_with", "") or ""
    if not pair:
        return GAUSSIAN
    if pair not in toy2d.TOY_SAMPLERS:
        raise ValueError(
            f"data.pair_with={pair!r}; valid: '' (standard normal) or {sorted(toy2d.TOY_SAMPLERS)}"
        )
    return toy_source(pair)


__all__ = ["source_from_config", "toy_source"]
