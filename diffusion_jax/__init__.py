"""diffusion_jax: diffusion and flow-matching generative models in JAX/Flax.

Every formulation is a Gaussian path z_t = alpha(t) x + sigma(t) eps (data at t=0, noise at t=1);
see `schedules`, `predictions`, `objectives` and `samplers`.
"""

__version__ = "0.1.0"
