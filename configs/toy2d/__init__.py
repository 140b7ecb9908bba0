"""2-D toy experiments: one config per formulation, identical in everything else."""
