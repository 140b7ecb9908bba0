"""Test-wide setup: 8 simulated CPU devices, as a TPU slice would have.

XLA reads the flag once, at backend initialisation, so it is set here before anything imports jax.
`make test` exports the same flag; this keeps plain `pytest` equivalent.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (numerical-accuracy tests)."""
    with jax.enable_x64(True):
        yield
