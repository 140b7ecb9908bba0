"""Test-wide setup: 8 simulated CPU devices, as a TPU slice would have; one compilation cache per
session; memory-heavy tests never side by side.

XLA reads the flag once, at backend initialisation, so it is set here before anything imports jax.
`make test` exports the same flag; this keeps plain `pytest` equivalent.

Session directory: the first pytest process of a session (the xdist controller, or the only process)
creates an empty temporary directory, exports it as `DIFFUSION_JAX_TEST_SESSION_DIR` (the xdist workers
and every subprocess the tests start inherit it) and deletes it at the end of the session.

Compilation cache: `JAX_COMPILATION_CACHE_DIR` is that directory's `xla_cache` (unless set already),
with a minimum compile time of 0.3 s and a size bound (which turns on JAX's file lock around every
cache read and write), so the workers and the subprocess CLIs / multi-process jobs reuse each other's
compiled programs instead of compiling them again. It starts empty each session, so nothing carries
over between runs; a hit returns the executable that the same compilation produced (the key hashes
the program, the compile options, the XLA flags and the jax/jaxlib versions), so results do not
depend on test order.

Memory-heavy tests (`@pytest.mark.heavy`: XLA compiling a training step peaks at several GB of RSS)
hold an exclusive file lock in the session directory while they run, so under `make test` (two
xdist workers sharing 24 GiB) two of them never run at the same time.
"""

import fcntl
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SESSION_ENV = "DIFFUSION_JAX_TEST_SESSION_DIR"
_OWN_SESSION = None
if SESSION_ENV not in os.environ:
    _OWN_SESSION = tempfile.mkdtemp(prefix="diffusion_jax_tests_")
    os.environ[SESSION_ENV] = _OWN_SESSION
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_OWN_SESSION, "xla_cache")
        # Only programs that took >= 0.3 s to compile: the eager per-primitive programs stay out
        # (thousands of tiny files would slow every write's size check); the bound enables the lock.
        # 0.3 s rather than 1 s caches the many small samplers / steps / metric programs that the
        # workers and CLIs compile alike: 2.6 CPU-min less per suite (20:05 -> 18:44 wall, idle).
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
        os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "heavy: peak RSS of several GB; never two at a time (tests/conftest.py)"
    )


def pytest_unconfigure(config):
    if _OWN_SESSION is not None:
        shutil.rmtree(_OWN_SESSION, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_heavy_test_at_a_time(request):
    """Tests marked `heavy` wait for each other across xdist workers (an flock in the session dir)."""
    if request.node.get_closest_marker("heavy") is None:
        yield
        return
    with open(os.path.join(os.environ[SESSION_ENV], "heavy.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (numerical-accuracy tests)."""
    with jax.enable_x64(True):
        yield
