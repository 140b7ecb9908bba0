"""Multi-host training: 2 local processes x 2 CPU devices (gloo collectives) match 1 process x 4.

Each process loads only its own half of every global batch and the global batch is assembled with
`jax.make_array_from_process_local_data`; the final checkpoint is written by both processes through
Orbax. The reference is the same config trained in this process on 4 of its simulated devices.
Tolerance: 1e-5 relative / 1e-6 absolute on parameters (cross-process all-reduces may sum in a
different order than the single-process one; measured differences are at float32 rounding level).
"""

import os
import sys
import textwrap

import jax
import numpy as np
import portpicker

from diffusion_jax.training import checkpoints as ck
from diffusion_jax.training import loop
from tests.multiproc import REPO, run_processes  # noqa: E402  (REPO re-exported for other tests)

WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    from diffusion_jax.training import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), cpu_collectives="gloo")
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    from tests.test_training_multihost import small_config
    from diffusion_jax.training import loop
    r = loop.train(small_config(), sys.argv[3], progress=False)
    print("RESULT", jax.process_index(), r.step, flush=True)
    """
)


def small_config():
    sys.path.insert(0, REPO)
    from configs.toy2d import vp_eps

    cfg = vp_eps.get_config("moons_tiny")
    cfg.training.num_steps = 4
    cfg.training.ckpt_every = 2
    cfg.training.log_every = 2
    cfg.data.batch_size = 32  # 16 rows per process, 8 per device
    cfg.training.fast_compile = True  # unoptimised XLA: same values, less compile time
    return cfg


def test_two_processes_match_one_process(tmp_path):
    workdir = str(tmp_path / "mh")
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the device count comes from jax_num_cpu_devices
    code = WORKER.format(repo=REPO)
    outs = run_processes(
        [[sys.executable, "-c", code, f"127.0.0.1:{port}", str(pid), workdir] for pid in range(2)],
        env,
        timeout=300,
    )
    for out, _err in outs:
        assert "RESULT" in out and " 4" in out

    ref = loop.train(small_config(), str(tmp_path / "ref"), progress=False, devices=jax.devices()[:4])
    state, _, _ = ck.load_train_state(workdir)
    assert int(state.step) == 4
    # The multi-host checkpoint holds both processes' data-iterator positions.
    c = ck.Checkpointer(workdir)
    _, data = c.restore(4, ck.abstract_like(state))
    c.close()
    assert sorted(data) == ["0", "1"]
    got = jax.tree.leaves((state.params, state.ema))
    want = jax.tree.leaves(jax.tree.map(np.asarray, (ref.state.params, ref.state.ema)))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
    # Parameters moved (the comparison is not between two initialisations).
    init = jax.tree.leaves(loop.build_runtime(small_config(), jax.devices()[:1]).host_state.params)
    params = jax.tree.leaves(state.params)
    moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(params, init, strict=True)]
    assert max(moved) > 1e-4
