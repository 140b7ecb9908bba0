"""MetricsLogger: the JSONL rows and the TensorBoard event records it writes, read back independently
(the TFRecord framing and tensorboardX's Event proto), and that opening TensorBoard does not import
torch (tensorboardX's writer would, ~1.8 s per training process) while torch stays importable."""

import glob
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, sys
import jax.numpy as jnp
import numpy as np
from diffusion_jax.training.logging import MetricsLogger
log = MetricsLogger(sys.argv[1], tensorboard=True)
log.write(3, {"loss": jnp.asarray(0.25, jnp.float32), "lr": 1e-3, "skipped": np.asarray(True)}, prefix="train/")
log.write_image(3, "samples", np.zeros((4, 4, 3), np.uint8))
log.close()
out = {"torch_loaded": "torch" in sys.modules}
import importlib.util
out["torch_installed"] = importlib.util.find_spec("torch") is not None if "torch" not in sys.modules else True
try:
    import torch  # must work again after the writer's import
    out["torch_imports"] = True
except ImportError:
    out["torch_imports"] = False
print(json.dumps(out))
"""


def _records(path):
    """The payloads of a TFRecord file: [len u64][crc u32][data][crc u32] per record."""
    data, i, out = open(path, "rb").read(), 0, []
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(data[i + 12 : i + 12 + n])
        i += 12 + n + 4
    return out


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("log"))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, workdir],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return workdir, json.loads(p.stdout.strip().splitlines()[-1])


def test_jsonl_and_event_file_hold_the_logged_values(logged):
    from tensorboardX.proto import event_pb2

    workdir, _ = logged
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert rows == [{"step": 3, "train/loss": 0.25, "train/lr": 1e-3, "train/skipped": 1.0}]
    (path,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    scalars, images = {}, []
    for payload in _records(path):
        ev = event_pb2.Event.FromString(payload)
        for v in ev.summary.value:
            if v.HasField("image"):
                images.append((ev.step, v.tag, v.image.height, v.image.width))
            else:
                scalars[v.tag] = (ev.step, v.simple_value)
    assert set(scalars) == {"train/loss", "train/lr", "train/skipped"}
    assert scalars["train/loss"] == (3, 0.25)
    np.testing.assert_allclose(scalars["train/lr"][1], 1e-3, rtol=1e-6)
    assert images == [(3, "samples", 4, 4)]


def test_tensorboard_does_not_import_torch_and_torch_still_imports(logged):
    _, child = logged
    assert child["torch_loaded"] is False
    assert child["torch_imports"] is child["torch_installed"]
