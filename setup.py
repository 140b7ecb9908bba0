"""Install entry for diffusion_jax: `pip install -e .[dev]`.

Versions are pinned so that a fixed-seed sample or a reproduced number does not drift with the
next release of a dependency; bump them deliberately, in one commit, with the tests green.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # Arrays, autodiff, jit and sharding.
    "jax==0.10.2",
    "jaxlib==0.10.2",
    # Neural networks (NNX, used functionally).
    "flax==0.12.8",
    # Optimizers, schedules, gradient transforms.
    "optax==0.2.8",
    # Async, keep-N, preemption-safe checkpoints.
    "orbax-checkpoint==0.12.8",
    # Dataset builders and array_record data sources (no TensorFlow needed).
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    # Deterministic, checkpointable input pipelines.
    "grain==0.2.18",
    # Experiment configs with command-line overrides.
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    # Adaptive ODE solves in-graph (Dormand-Prince / Tsit5, likelihood).
    "diffrax==0.7.2",
    "equinox==0.13.8",
    # Optimal transport: in-graph Sinkhorn (ott-jax) and exact OT on the host (POT).
    "ott-jax==0.6.0",
    "POT==0.9.7.post1",
    # Host-side numerics and references.
    "numpy==2.4.6",
    "scipy==1.17.1",
    # Images, plots, progress bars, TensorBoard event files without TensorFlow.
    "pillow==13.0.0",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
]

EXTRAS = {
    "dev": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "ruff==0.17.6",
        # free ports for the multi-process (jax.distributed, gloo) tests
        "portpicker==1.6.0",
    ],
    # Reference implementations for parity tests (random weights, CPU). Never imported by the
    # package; `make test` installs them. torch 2.14.1 / torchvision 0.29.1 are the releases this
    # machine class carries on disk for Python 3.11 (pytorch-fid needs torchvision).
    "parity": [
        "torch==2.14.1",
        "torchvision==0.29.1",
        "diffusers==0.42.1",
        "transformers==5.23.0",
        "pytorch-fid==0.3.0",
        "safetensors==0.8.0",
        # the CFM paper runner's moons (make_moons' evenly spaced arcs) for reproduction 3a's data check
        "scikit-learn==1.9.1",
    ],
    # Baselines that only the benchmarks run (benchmarks/ot_cfm_run.py): torchcfm's own OT-CFM loop.
    "bench": [
        "torchcfm==1.0.7",
    ],
}

setup(
    name="diffusion_jax",
    version="0.1.0",
    description="Diffusion and flow-matching generative models in JAX/Flax: one core, all formulations.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["diffusion_jax", "diffusion_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
