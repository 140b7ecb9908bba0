"""Fault injection: what a run does when things go wrong, and that nothing good is lost.

Each test breaks one thing (a config changed between runs, damaged checkpoint files, a transient
read error, a NaN learning rate, two runs in one workdir, SIGKILL mid-save, SIGTERM during start-up,
a full or read-only disk, a path with spaces, ...), checks the outcome the README's "What happens
when things go wrong" promises, and checks that the checkpoints that were good before are still
there (by SHA-256 of every file) afterwards.

One tiny run (rectified-flow MLP on moons, 6 steps, checkpoints 2, 4, 6, one device) is trained
once per module and copied per test; in-process runs use one device so their final states are
bitwise comparable with it. Subprocesses only where a real process is needed (kill, signals,
locks held by another process, mounts).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import numpy as np
import pytest

from diffusion_jax.training import checkpoints as ck
from diffusion_jax.training import integrity, loop
from diffusion_jax.training import workdir as wd
from diffusion_jax.training.lock import LOCK_FILE, RunLock, WorkdirLocked
from diffusion_jax.training.step import NonFiniteError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV1 = jax.devices()[:1]
STEPS = 6


def tiny_config(num_steps=STEPS):
    """Rectified-flow MLP on moons; checkpoints every 2 steps, all kept."""
    sys.path.insert(0, REPO)
    from configs.toy2d import rf_uniform

    cfg = rf_uniform.get_config("moons_tiny")
    t = cfg.training
    t.num_steps, t.ckpt_every, t.keep, t.log_every = num_steps, 2, 10, 2
    t.fast_compile = True
    t.max_nonfinite_in_a_row = 3
    cfg.eval.num_samples = 64
    cfg.sampling.num_steps = 4
    return cfg


def tree_digest(root, skip=()):
    """{relative path: sha256} of every file under `root` (top-level names in `skip` ignored)."""
    out = {}
    for base, dirs, files in os.walk(root):
        rel_base = os.path.relpath(base, root)
        if rel_base == ".":
            dirs[:] = [d for d in dirs if d not in skip]
        for n in files:
            p = os.path.join(base, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def ckpt_digest(workdir, step):
    return tree_digest(os.path.join(workdir, "checkpoints", str(step)))


def host(state):
    return jax.tree.map(
        lambda x: np.asarray(jax.device_get(x)), (state.params, state.ema, state.opt_state, state.step)
    )


def assert_bitwise(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(workdir, final host state, {step: digest}) of the reference run."""
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    r = loop.train(tiny_config(), workdir, progress=False, devices=DEV1)
    assert r.step == STEPS and ck.Checkpointer(workdir, read_only=True).all_steps() == [2, 4, 6]
    return workdir, host(r.state), {s: ckpt_digest(workdir, s) for s in (2, 4, 6)}


def copy_run(base, tmp_path, name="run"):
    dst = str(tmp_path / name)
    shutil.copytree(base[0], dst)
    return dst


def assert_still_there(workdir, base, steps, where="checkpoints"):
    for s in steps:
        assert tree_digest(os.path.join(workdir, where, str(s))) == base[2][s], f"checkpoint {s} changed"


def state_files(workdir, step):
    root = os.path.join(workdir, "checkpoints", str(step), "state")
    return sorted(
        os.path.join(b, n)
        for b, _, fs in os.walk(root)
        for n in fs
        if os.sep + "d" + os.sep in os.path.join(b, n)
    )


# ------------------------------------------------------------------------------------------------
# Config changed between runs


def test_config_change_stops_before_anything_is_written(base, tmp_path):
    workdir = copy_run(base, tmp_path)
    before = tree_digest(workdir)
    cfg = tiny_config(num_steps=8)
    cfg.model.width = 32
    with pytest.raises(wd.RunConfigMismatch) as e:
        loop.train(cfg, workdir, progress=False, devices=DEV1)
    msg = str(e.value)
    assert "model.width: saved 16, requested 32" in msg
    assert "new --workdir" in msg and f"--config.resume=finetune:{workdir}" in msg
    assert tree_digest(workdir) == before  # nothing moved, nothing overwritten, no lock left


def test_unguarded_change_continues_the_run(base, tmp_path):
    """More steps and another learning rate are a continuation, not another experiment."""
    workdir = copy_run(base, tmp_path)
    cfg = tiny_config(num_steps=8)
    cfg.training.lr = 5e-4
    r = loop.train(cfg, workdir, progress=False, devices=DEV1)
    assert r.step == 8
    assert_still_there(workdir, base, (2, 4, 6))
    assert ck.load_config(workdir).training.lr == 5e-4


def test_finetune_from_weights_of_another_run(base, tmp_path):
    src = copy_run(base, tmp_path, "src")
    before = tree_digest(src)
    cfg = tiny_config(num_steps=0)
    cfg.objective.time_distribution = "logit_normal"  # another objective, same network
    cfg.resume = f"finetune:{src}"
    r = loop.train(cfg, str(tmp_path / "ft"), progress=False, devices=DEV1)
    src_state, _, _ = ck.load_train_state(src)
    assert_bitwise(host(r.state)[0], host(src_state)[0])  # the weights of checkpoint 6
    assert int(r.state.step) == 0
    assert all(
        not np.any(np.asarray(x)) for x in jax.tree.leaves(r.state.opt_state) if np.ndim(x)
    )  # fresh Adam
    assert tree_digest(src) == before  # the source run is only read
    wider = tiny_config(num_steps=0)
    wider.model.width = 32
    wider.resume = f"finetune:{src}"
    with pytest.raises(ValueError, match="do not fit this model"):
        loop.train(wider, str(tmp_path / "ft2"), progress=False, devices=DEV1)


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints


def _truncate(workdir, step):
    for f in state_files(workdir, step):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _delete(workdir, step):
    os.remove(state_files(workdir, step)[0])


def _garble(workdir, step):
    f = state_files(workdir, step)[-1]
    data = bytearray(open(f, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte: only the checksum can tell
    open(f, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _delete, _garble], ids=["truncated", "deleted", "garbled"])
def test_damaged_latest_checkpoint_is_quarantined_and_training_resumes_exactly(base, tmp_path, damage):
    workdir = copy_run(base, tmp_path)
    damage(workdir, 6)
    with pytest.warns(RuntimeWarning, match="checkpoint 6 is damaged"):
        r = loop.train(tiny_config(), workdir, progress=False, devices=DEV1)
    assert_bitwise(host(r.state), base[1])  # resumed from 4, replayed 5-6 exactly
    assert os.path.isdir(os.path.join(workdir, ck.CORRUPT_DIR, "6"))  # moved aside, not deleted
    assert_still_there(workdir, base, (2, 4))


def test_all_checkpoints_damaged_never_restarts_silently(base, tmp_path):
    workdir = copy_run(base, tmp_path)
    for s in (2, 4, 6):
        _truncate(workdir, s)
    damaged = {s: ckpt_digest(workdir, s) for s in (2, 4, 6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ck.NoIntactCheckpoint, match="resume=restart"):
            loop.train(tiny_config(), workdir, progress=False, devices=DEV1)
        with pytest.raises(ck.NoIntactCheckpoint, match="resume=restart"):  # and not on a re-run either
            loop.train(tiny_config(), workdir, progress=False, devices=DEV1)
    for s in (2, 4, 6):  # all kept, byte for byte
        kept = tree_digest(os.path.join(workdir, ck.CORRUPT_DIR, str(s)))
        kept.pop("checksums.json")  # their manifests travel with them
        assert kept == damaged[s]
    cfg = tiny_config()
    cfg.resume = "restart"
    r = loop.train(cfg, workdir, progress=False, devices=DEV1)
    assert_bitwise(host(r.state), base[1])  # from step 0, the same run again


def test_iterator_and_model_step_disagreement_is_damage(base, tmp_path):
    workdir = copy_run(base, tmp_path)
    os.remove(integrity.manifest_path(workdir, 6))  # no checksums: the step check must catch it
    meta = os.path.join(workdir, "checkpoints", "6", "data", "metadata")
    data = json.load(open(meta))
    data["0"]["step"] = 5
    json.dump(data, open(meta, "w"))
    with pytest.warns(RuntimeWarning, match="steps disagree"):
        r = loop.train(tiny_config(), workdir, progress=False, devices=DEV1)
    assert_bitwise(host(r.state), base[1])
    assert_still_there(workdir, base, (2, 4))


def test_transient_read_errors_are_retried_then_fatal_never_a_restart(base, tmp_path, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    monkeypatch.setattr(integrity, "RETRY_DELAYS", (0.0, 0.0))
    workdir = copy_run(base, tmp_path)
    before = tree_digest(workdir)
    real = ocp.CheckpointManager.restore
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] <= fail_times:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", flaky)
    fail_times = 10**9
    with pytest.raises(integrity.CheckpointUnavailable, match="failed 3 times"):
        loop.train(tiny_config(), workdir, progress=False, devices=DEV1)
    assert tree_digest(workdir) == before  # nothing quarantined, nothing started
    calls["n"], fail_times = 0, 2
    r = loop.train(tiny_config(num_steps=8), workdir, progress=False, devices=DEV1)
    assert r.step == 8 and calls["n"] == 3
    assert_still_there(workdir, base, (2, 4, 6))


def test_event_loop_closed_tracebacks_are_gone(base, tmp_path, capfd):
    workdir = copy_run(base, tmp_path)
    os.remove(integrity.manifest_path(workdir, 6))  # force the read of truncated files through Orbax
    _truncate(workdir, 6)
    with pytest.warns(RuntimeWarning, match="checkpoint 6 is damaged.*OUT_OF_RANGE"):
        state, _, _ = ck.load_train_state(workdir)
    time.sleep(0.5)  # the stragglers of the failed read report after it returned
    assert int(state.step) == 4
    assert "Event loop is closed" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------------
# Read-only loaders


def test_loaders_sample_and_evaluate_never_modify_the_run(base, tmp_path):
    from diffusion_jax import evaluate, sample

    workdir = copy_run(base, tmp_path)
    _truncate(workdir, 6)  # a damaged latest checkpoint must be skipped, not moved
    skip = ("eval", "samples")  # their own output folders
    before = tree_digest(workdir, skip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state, _, _ = ck.load_train_state(workdir)
        assert int(state.step) == 4
        ck.load_denoiser_and_shape(workdir, ema="params")
        cfg = ck.load_config(workdir)
        cfg.eval.num_samples, cfg.sampling.num_steps = 64, 2
        out = evaluate.evaluate(cfg, workdir)
        assert out["step"] == 4
        req = sample.get_default_config()
        req.denoiser.source, req.seeds, req.grid.num_steps, req.progress = "checkpoint", "0-3", 2, False
        sample.run_sampling(req, workdir)
        assert os.listdir(os.path.join(workdir, "samples"))
        assert tree_digest(workdir, skip) == before
        # A config.json that no longer fits the checkpoints: an error, not quarantine.
        bad_cfg = ck.load_config(workdir)
        bad_cfg.model.width = 32
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(bad_cfg.to_json(indent=1, sort_keys=True))
        before = tree_digest(workdir, skip)
        with pytest.raises(ck.CheckpointMismatch, match="intact"):
            ck.load_train_state(workdir)
    assert tree_digest(workdir, skip) == before


# ------------------------------------------------------------------------------------------------
# Health: non-finite learning rates and states


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_learning_rate_is_rejected_before_anything(tmp_path, value):
    cfg = tiny_config()
    cfg.training.lr = value
    with pytest.raises(ValueError, match=r"training\.lr=(nan|inf) must be a finite number"):
        loop.train(cfg, str(tmp_path / "run"), progress=False, devices=DEV1)
    assert not os.path.exists(tmp_path / "run")


def test_update_that_poisons_the_state_is_skipped_and_never_saved(base, tmp_path, monkeypatch):
    """Bypassing validation: a NaN learning rate gives a finite loss and gradient but NaN
    parameters; every such update is skipped and counted, no checkpoint of it is written, and the
    good checkpoints keep their places in the keep-N rotation."""
    monkeypatch.setattr(loop, "validate_config", lambda cfg: cfg)
    workdir = copy_run(base, tmp_path)
    cfg = tiny_config(num_steps=12)
    cfg.training.lr = float("nan")
    cfg.training.keep = 3
    seen = []
    hook = lambda step, state, m: seen.append((float(m["loss"]), float(m["finite"])))  # noqa: E731
    with pytest.raises(
        NonFiniteError, match="3 consecutive updates had a non-finite loss, gradient or state"
    ):
        loop.train(cfg, workdir, progress=False, devices=DEV1, hooks=[hook])
    assert all(np.isfinite(loss) and finite == 0.0 for loss, finite in seen)
    assert ck.Checkpointer(workdir, read_only=True).all_steps() == [2, 4, 6]
    assert_still_there(workdir, base, (2, 4, 6))


# ------------------------------------------------------------------------------------------------
# Nothing written before validation


def test_indivisible_batch_and_file_workdir_fail_before_writing(tmp_path):
    cfg = tiny_config()
    cfg.data.batch_size = 30  # 8 devices
    with pytest.raises(ValueError, match=r"data\.batch_size=30 is not divisible by the 8 batch shards"):
        loop.train(cfg, str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        loop.train(tiny_config(), str(tmp_path / "file"), progress=False, devices=DEV1)
    assert (tmp_path / "file").read_text() == "x"


def test_workdir_path_with_spaces(base, tmp_path):
    workdir = str(tmp_path / "my runs" / "moons run 1")
    shutil.copytree(base[0], workdir)
    _truncate(workdir, 6)
    with pytest.warns(RuntimeWarning, match="checkpoint 6 is damaged"):
        r = loop.train(tiny_config(), workdir, progress=False, devices=DEV1)
    assert_bitwise(host(r.state), base[1])
    assert_still_there(workdir, base, (2, 4))


# ------------------------------------------------------------------------------------------------
# One writer per workdir


HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from diffusion_jax.training.lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("HELD", flush=True)
    time.sleep(600)
    """
)


def test_second_run_fails_at_once_and_stale_lock_is_taken_over(base, tmp_path):
    workdir = copy_run(base, tmp_path)
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(repo=REPO), workdir], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert p.stdout.readline().strip() == "HELD"
        before = tree_digest(workdir)
        with pytest.raises(WorkdirLocked, match=f"in use by another run .*PID {p.pid}"):
            loop.train(tiny_config(num_steps=8), workdir, progress=False, devices=DEV1)
        assert tree_digest(workdir) == before
    finally:
        p.kill()  # SIGKILL: the lock file stays behind, its holder is gone
        p.wait()
    assert os.path.exists(os.path.join(workdir, LOCK_FILE))
    with pytest.warns(RuntimeWarning, match="taking over the stale lock"):
        r = loop.train(tiny_config(num_steps=8), workdir, progress=False, devices=DEV1)
    assert r.step == 8 and not os.path.exists(os.path.join(workdir, LOCK_FILE))
    assert_still_there(workdir, base, (2, 4, 6))


def test_lock_of_another_host_goes_stale_only_without_heartbeat(tmp_path):
    path = tmp_path / LOCK_FILE
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "start": None, "since": time.time()}))
    with pytest.raises(WorkdirLocked, match="host 'elsewhere'"):
        RunLock(str(tmp_path)).acquire()
    old = time.time() - 1000
    os.utime(path, (old, old))
    with pytest.warns(RuntimeWarning, match="stale"):
        lock = RunLock(str(tmp_path), stale_after=300).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


# ------------------------------------------------------------------------------------------------
# Killed processes


WORKER = textwrap.dedent(
    """
    import os, random, signal, sys, threading
    sys.path.insert(0, {repo!r})
    import jax
    import orbax.checkpoint as ocp
    from tests.test_faults import tiny_config
    from diffusion_jax.training import integrity, loop

    workdir, where, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if where == "save":  # somewhere inside the asynchronous write of checkpoint 4
        real = ocp.CheckpointManager.save
        def save(self, step, *a, **k):
            out = real(self, step, *a, **k)
            if step == 4:
                threading.Timer(rng.uniform(0.0, 0.05), die).start()
            return out
        ocp.CheckpointManager.save = save
    elif where == "manifest":  # while hashing the files of a committed checkpoint
        real_sha, n = integrity._sha256, rng.randrange(1, 40)
        def sha(path):
            global n
            n -= 1
            if n == 0:
                die()
            return real_sha(path)
        integrity._sha256 = sha
    hook = lambda step, state, m: die() if where == "step" and step == rng.randint(1, 5) else None
    loop.train(tiny_config(), workdir, progress=False, devices=jax.devices()[:1], hooks=[hook])
    print("NOT KILLED", flush=True)
    """
)


@pytest.mark.parametrize("where,seed", [("step", 0), ("save", 1), ("manifest", 3)])
def test_sigkill_anywhere_then_resume_is_bitwise_exact(base, tmp_path, where, seed):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.run(
        [sys.executable, "-c", WORKER.format(repo=REPO), workdir, where, str(seed)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr[-3000:]
    survivors = ck.Checkpointer(workdir, read_only=True).all_steps() if os.path.isdir(workdir) else []
    good = {s: ckpt_digest(workdir, s) for s in survivors}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = loop.train(tiny_config(), workdir, progress=False, devices=DEV1)
    assert_bitwise(host(r.state), base[1])
    for s, digest in good.items():  # whatever was committed before the kill is still there
        assert ckpt_digest(workdir, s) == digest


def _cli(workdir, *extra, env=None, timeout=300):
    cmd = [
        sys.executable,
        "-m",
        "diffusion_jax.train",
        "--config=configs/toy2d/rf_uniform.py:moons_tiny",
        f"--workdir={workdir}",
        "--config.training.fast_compile=True",
        "--progress=false",
        *extra,
    ]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", **(env or {}))
    return cmd, env


def test_sigterm_during_startup_saves_and_exits_zero(tmp_path):
    workdir = str(tmp_path / "run")
    cmd, env = _cli(workdir)
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # still importing: long before the first compile
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "preempted: checkpoint saved at step 0" in err
    assert ck.Checkpointer(workdir, read_only=True).all_steps() == [0]


# ------------------------------------------------------------------------------------------------
# Full and read-only disks (a private tmpfs mount in a user + mount namespace)


def _unshare_works():
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_mounts = pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm (user + mount namespaces)")


def _in_namespace(script, tmp_path):
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
    )  # fmt: skip


@needs_mounts
def test_disk_full_stops_with_an_error_and_keeps_good_checkpoints(base, tmp_path):
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    pages = sum(
        -(-os.path.getsize(os.path.join(b, f)) // 4096) or 1 for b, _, fs in os.walk(base[0]) for f in fs
    )
    size_kb = 4 * pages + 40  # tmpfs gives each file whole 4 KiB pages: room for logs, not a checkpoint
    cmd, _ = _cli(f"{mnt}/run", "--config.training.num_steps=12", "--config.training.ckpt_every=2")
    script = (
        f"mount -t tmpfs -o size={size_kb}k tmpfs {mnt} && cp -a {base[0]} {mnt}/run || exit 3; "
        f"{' '.join(cmd)}; echo $? > {out}/rc; cp -a {mnt}/run {out}/run"
    )
    p = _in_namespace(script, tmp_path)
    rc = int((out / "rc").read_text())
    assert rc == 1, p.stderr[-3000:]
    assert "error: [Errno 28] saving checkpoint 8" in p.stderr and "No space left on device" in p.stderr
    assert f'File "{REPO}/diffusion_jax' not in p.stderr  # one line from us, no traceback
    assert_still_there(str(out / "run"), base, (2, 4, 6))
    assert set(ck.Checkpointer(str(out / "run"), read_only=True).all_steps()) >= {2, 4, 6}


@needs_mounts
def test_unwritable_workdir_fails_in_one_line(base, tmp_path):
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    cmd, _ = _cli(f"{mnt}/run")
    script = f"mount -t tmpfs -o ro tmpfs {mnt} && {' '.join(cmd)}; echo $? > {out}/rc"
    p = _in_namespace(script, tmp_path)
    assert int((out / "rc").read_text()) == 1, p.stderr[-3000:]
    assert "cannot write to --workdir" in p.stderr and "Read-only file system" in p.stderr
    assert "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------------
# Seed lists


def test_duplicate_seed_list_is_reported_without_hanging():
    """A subprocess, so a quadratic duplicate report (hours for 200,000 seeds) is killed, not left
    burning CPU for the rest of the session."""
    code = "from diffusion_jax.samplers.seeds import parse_seeds\nparse_seeds('0-199999,5')"
    try:
        p = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("parse_seeds('0-199999,5') did not finish in 120 s")
    assert "ValueError: seeds: duplicates [5]" in p.stderr
