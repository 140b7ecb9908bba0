"""Model configs (the `model` field): each module's `get_config(arg=None)` returns a ConfigDict
accepted by `diffusion_jax.models.build_model`."""
