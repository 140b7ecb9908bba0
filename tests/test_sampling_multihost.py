"""Multi-host sampling: 2 local processes x 2 CPU devices (jax.distributed) write, per seed, the same
bits as 1 process, each process drawing its own contiguous block of chunks and writing its own files.
"""

import json
import os
import sys

import numpy as np
import portpicker

from diffusion_jax import sample as cli
from diffusion_jax.samplers import seeds as sd
from tests.multiproc import cluster_flags, run_processes

SEEDS, CHUNK = "0-20", 4  # 6 chunks: process 0 draws chunks 0-2 (seeds 0-11), process 1 chunks 3-5


def _request(out):
    cfg = cli.get_default_config()
    cfg.denoiser.source = "analytic"
    cfg.sampler.name = "euler_ancestral"  # stochastic: per-step noise from the per-seed keys too
    cfg.grid.num_steps = 5
    cfg.seeds, cfg.chunk_size, cfg.output_dir, cfg.progress = SEEDS, CHUNK, out, False
    return cfg


def test_chunk_blocks_cover_every_chunk_once():
    for n, p in [(6, 2), (7, 3), (1, 4), (10, 1)]:
        got = [list(sd.chunk_block(n, i, p)) for i in range(p)]
        assert sum(got, []) == list(range(n))
        assert all(b == list(range(b[0], b[0] + len(b))) for b in got if b)  # contiguous


def test_two_processes_write_the_same_bits_as_one(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    cli.run_sampling(_request(one), None)
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the device count comes from --num_cpu_devices
    args = [
        f"--config.{k}={v}"
        for k, v in [
            ("denoiser.source", "analytic"),
            ("sampler.name", "euler_ancestral"),
            ("grid.num_steps", 5),
            ("seeds", SEEDS),
            ("chunk_size", CHUNK),
            ("output_dir", two),
            ("num_devices", -1),
            ("progress", "false"),
        ]
    ]
    outs = run_processes(
        [
            [
                sys.executable,
                "-m",
                "diffusion_jax.sample",
                *args,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={pid}",
                "--num_cpu_devices=2",
            ]
            for pid in range(2)
        ],
        env,
        timeout=300,
    )
    drawn = []
    for _, err in outs:
        line = next(ln for ln in err.splitlines() if ln.startswith("[diffusion_jax.sample]"))
        drawn.append(json.loads(line.split("] ", 1)[1])["drawn"])
    assert drawn == [12, 9]
    for s in sd.parse_seeds(SEEDS):
        a, b = np.load(sd.sample_path(one, s)), np.load(sd.sample_path(two, s))
        np.testing.assert_array_equal(a["sample"], b["sample"])
        assert str(a["sampler"]) == str(b["sampler"]) == "euler_ancestral"


def test_two_process_evaluate_gives_the_same_samples_and_metric(tmp_path):
    """`evaluate` over 2 processes x 2 devices (gloo): every seed's file and the W2 / MMD of the
    gathered samples equal the 1-process evaluation of the same checkpoint."""
    import shutil

    from diffusion_jax import evaluate as ev
    from diffusion_jax.training import checkpoints, loop
    from tests.test_sampling_engine import _tiny

    one = str(tmp_path / "one")
    cfg = _tiny(False)
    cfg.training.sample_every = 0
    loop.train(cfg, one, progress=False, devices=jax_devices()[:1])
    two = str(tmp_path / "two")
    shutil.copytree(one, two)
    ecfg = checkpoints.load_config(one)
    ecfg.eval.update(num_samples=30, save_samples=True)
    want = ev.evaluate(ecfg, one)
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    outs = run_processes(
        [
            [
                sys.executable,
                "-m",
                "diffusion_jax.evaluate",
                f"--workdir={two}",
                "--config.eval.num_samples=30",
                "--config.eval.save_samples=true",
                "--progress=false",
                *cluster_flags(port, pid),
            ]
            for pid in range(2)
        ],
        env,
        timeout=300,
    )
    got = json.loads(outs[0][0][outs[0][0].index("{") :])
    assert got["w2"] == want["w2"] and got["mmd"] == want["mmd"] and got["num_samples"] == 30
    step = want["step"]
    for s in range(30):
        a = np.load(os.path.join(one, "eval", f"{step:08d}_samples", f"{s:06d}.npz"))["sample"]
        b = np.load(os.path.join(two, "eval", f"{step:08d}_samples", f"{s:06d}.npz"))["sample"]
        np.testing.assert_array_equal(a, b)


def jax_devices():
    import jax

    return jax.devices()
