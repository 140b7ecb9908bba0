"""ml_collections experiment configs; each module has `get_config(arg=None)`.

`configs/models/` holds the `model` field of an experiment: one module per published network.
"""
