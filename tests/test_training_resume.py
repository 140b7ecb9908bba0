"""Checkpoints: exact resume after SIGTERM (preemption save) and SIGKILL, corrupted-checkpoint
fallback, and a diverging run that halts without touching what was saved.

The reference is an uninterrupted run of the same config in this process. Interrupted runs are
subprocesses with the same 8 simulated devices and XLA flags; the claim checked is bitwise
equality of the final parameters, EMA and optimizer state (same programs, same device count, and
per-step randomness fold_in(key, step) plus a restored data-iterator position).
"""

import glob
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest

from diffusion_jax.training import checkpoints as ck
from diffusion_jax.training import loop
from diffusion_jax.training.step import NonFiniteError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 12

WORKER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from tests.test_training_resume import small_config
    from diffusion_jax.training import loop

    workdir, mode, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sig = {{"sigkill": signal.SIGKILL}}[mode]

    def hook(step, state, metrics):
        if step == at:
            os.kill(os.getpid(), sig)

    r = loop.train(small_config(), workdir, hooks=[hook], progress=False)
    print(f"RESULT preempted={{r.preempted}} step={{r.step}}", flush=True)
    """
)


def small_config():
    """Tiny rectified-flow MLP on moons; checkpoints every 3 steps, all kept."""
    sys.path.insert(0, REPO)
    from configs.toy2d import rf_uniform

    cfg = rf_uniform.get_config("moons_tiny")
    cfg.training.num_steps = NUM_STEPS
    cfg.training.ckpt_every = 3
    cfg.training.keep = 10
    cfg.training.log_every = 4
    cfg.training.ema_power = 0.05  # resume must also restore the power-EMA exactly
    cfg.training.fast_compile = True  # unoptimised XLA: same values, less compile time
    return cfg


def _run_worker(workdir, mode, at, cache_dir):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    code = WORKER.format(repo=REPO)
    return subprocess.run(
        [sys.executable, "-c", code, workdir, mode, str(at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )


def _host(state):
    return jax.tree.map(
        lambda x: np.asarray(jax.device_get(x)), (state.params, state.ema, state.opt_state, state.step)
    )


def _assert_bitwise_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ref"))
    result = loop.train(small_config(), workdir, progress=False)
    assert result.step == NUM_STEPS and not result.preempted
    return workdir, _host(result.state)


def test_sigterm_save_then_sigkill_then_resume_is_exact(reference, tmp_path):
    _, ref = reference
    workdir = str(tmp_path / "run")

    # 1) SIGTERM at step 5 (sent to this process; the handler only sets a flag): the loop saves
    #    checkpoint 5 and returns cleanly.
    def sigterm_at_5(step, state, metrics):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    r = loop.train(small_config(), workdir, hooks=[sigterm_at_5], progress=False)
    assert r.preempted and r.step == 5
    assert signal.getsignal(signal.SIGTERM) is not None  # previous handler restored
    assert ck.Checkpointer(workdir, read_only=True).all_steps() == [3, 5]

    # 2) Resume in a subprocess; SIGKILL at step 10 (no chance to save; an async save may be cut
    #    short, which Orbax's temporary-directory commit makes invisible).
    p = _run_worker(workdir, "sigkill", 10, str(tmp_path / "xla_cache"))
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    steps = ck.Checkpointer(workdir, read_only=True).all_steps()
    assert 5 in steps and max(steps) < NUM_STEPS

    # 3) Resume in this process to the end: bitwise equal to the uninterrupted run.
    result = loop.train(small_config(), workdir, progress=False)
    assert result.step == NUM_STEPS
    _assert_bitwise_equal(_host(result.state), ref)


def test_corrupted_latest_checkpoint_falls_back_with_warning(reference, tmp_path):
    src, ref = reference
    workdir = str(tmp_path / "copy")
    subprocess.run(["cp", "-r", src, workdir], check=True)
    # Truncate every array data file of the final checkpoint (12) to half its size.
    files = [
        f
        for f in glob.glob(os.path.join(workdir, "checkpoints", "12", "state", "**", "*"), recursive=True)
        if os.path.isfile(f) and os.sep + "d" + os.sep in f
    ]
    assert files
    for f in files:
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:
            fh.truncate(size // 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, cfg, _ = ck.load_train_state(workdir)
    assert any("checkpoint 12 is damaged" in str(w.message) for w in caught)
    assert int(state.step) == 9
    # A loader is read-only: the damaged checkpoint is skipped, left in place.
    assert ck.Checkpointer(workdir, read_only=True).all_steps() == [3, 6, 9, 12]
    # Training resumes from 9, moves 12 aside (not deleted) and reproduces the uninterrupted result.
    with pytest.warns(RuntimeWarning, match="checkpoint 12 is damaged"):
        result = loop.train(small_config(), workdir, progress=False)
    assert os.path.isdir(os.path.join(workdir, ck.CORRUPT_DIR, "12"))
    _assert_bitwise_equal(_host(result.state), ref)


def test_diverging_run_halts_and_keeps_saved_checkpoints(tmp_path):
    cfg = small_config()
    cfg.training.lr = 1e30  # the first Adam step moves every weight by ~1e30: activations overflow
    cfg.training.grad_clip = 0.0
    cfg.training.ckpt_every = 1
    cfg.training.keep = 1
    cfg.training.max_nonfinite_in_a_row = 3
    workdir = str(tmp_path / "nan")
    with pytest.raises(NonFiniteError, match="3 consecutive updates had a non-finite"):
        loop.train(cfg, workdir, progress=False, devices=jax.devices()[:1])
    # Step 1 was finite and saved; the states after skipped updates were not saved, so keep=1
    # did not rotate checkpoint 1 out.
    assert ck.Checkpointer(workdir, read_only=True).all_steps() == [1]
    state, _, _ = ck.load_train_state(workdir)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
