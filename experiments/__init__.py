"""Experiment scripts: comparisons and reproductions that write their outputs under `experiments/results/`.

Each script is an absl entry point run as a module from the repository root, e.g.
`python -m experiments.benchmark_samplers --config=configs/experiments/benchmark_samplers.py:quick`.
"""
