"""ml_collections configs for the scripts in `experiments/` (one file per script, `get_config(arg)`)."""
