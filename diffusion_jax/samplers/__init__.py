"""Samplers: time grids, deterministic / stochastic / multistep / adaptive solvers, guidance,
editing, and the fixed-seed sampling API. See `base` for the interface every sampler follows."""
