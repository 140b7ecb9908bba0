"""Every `python -m diffusion_jax.*` command and every Python snippet of the README's "Using it"
section runs as written, read from README.md itself (so the README cannot drift), with only these
substitutions for test size: `.venv/bin/python` -> this interpreter, `runs/` -> a temporary folder,
config variants -> their `_tiny` versions, and `--config.training.num_steps=2
--config.training.fast_compile=true` appended to training (unoptimised XLA for the step: the same
operations, a fraction of the compile time; sampling programs are compiled as usual).

Then the outputs are checked: the conditional example (a rectified-flow, class-conditional
checkpoint, no grid flag) writes label = seed mod 10 and guidance 2 into every file, and the README's
Pipeline one-liner gives those files' samples bit for bit.
"""

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests.test_training_multihost import REPO

README = os.path.join(REPO, "README.md")
SECTION = "## Using it"


def _blocks(text: str):
    """(language, body) of every fenced code block."""
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)


def readme_section():
    text = open(README).read()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def section_commands(title: str) -> list[str]:
    """The shell commands of the README section `title` (e.g. "## Comparing formulations"), for the
    tests of the scripts they call (those tests run them, with a temporary output folder)."""
    text = open(README).read()
    start = text.index(title)
    body = text[start : text.index("\n## ", start + len(title))]
    return [
        ln.strip()
        for lang, block in _blocks(body)
        if lang != "python"
        for ln in block.replace("\\\n", " ").splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]


def readme_commands():
    """The shell commands (continuation lines joined) and Python snippets of the section."""
    cmds, snippets = [], []
    for lang, body in _blocks(readme_section()):
        if lang == "python":
            snippets.append(body)
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    return cmds, snippets


def _tiny(arg: str) -> str:
    """'--config=configs/x.py:8gaussians' -> ':8gaussians_tiny'; ':cond' -> ':cond_tiny'."""
    m = re.match(r"(--config=configs/[\w/]+\.py):(\w+)$", arg)
    return f"{m.group(1)}:{m.group(2)}_tiny" if m and not m.group(2).endswith("tiny") else arg


def _run(cmd: str, tmp: str):
    args = shlex.split(cmd.replace("runs/", f"{tmp}/runs/"))
    assert args[0] == ".venv/bin/python" and args[1] == "-m", cmd
    args = [sys.executable, *args[1:]]
    if args[2] == "diffusion_jax.train":
        args = [_tiny(a) for a in args]
        args += ["--config.training.num_steps=2", "--config.training.fast_compile=true", "--progress=false"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{cmd}\n{p.stderr[-3000:]}"
    return p


def test_readme_parses_into_the_commands_we_expect():
    cmds, snippets = readme_commands()
    mods = [c.split()[2] for c in cmds]
    assert set(mods) == {
        "diffusion_jax.train",
        "diffusion_jax.sample",
        "diffusion_jax.evaluate",
        "diffusion_jax.reflow",
    }
    assert any("conditioning.labels" in c and "grid.name" not in c for c in cmds)  # no grid flag
    assert len(snippets) == 1 and "Pipeline.from_workdir" in snippets[0]


@pytest.mark.slow
@pytest.mark.heavy  # trains the Fashion-MNIST U-Net in a subprocess: GBs of RSS (tests/conftest.py)
def test_every_readme_command_runs(tmp_path):
    tmp = str(tmp_path)
    cmds, snippets = readme_commands()
    for cmd in cmds:
        p = _run(cmd, tmp)
        if "--list" in cmd:
            assert "samplers:" in p.stdout and "grids:" in p.stdout
    runs = os.path.join(tmp, "runs")
    ot = os.path.join(runs, "ot", "samples")
    outs = sorted(d for d in os.listdir(ot) if os.path.isdir(os.path.join(ot, d)))
    assert len(outs) == 2 and any("heun_karras20" in d for d in outs), outs
    assert len([f for f in os.listdir(os.path.join(ot, outs[0])) if f.endswith(".npz")]) in (64, 65)
    assert os.path.exists(os.path.join(runs, "ot", "eval"))
    sb = os.path.join(runs, "sbcfm", "samples")  # the SB-CFM run sampled on its SDE
    (sde,) = [d for d in os.listdir(sb) if "interpolant_em" in d]
    last = np.load(os.path.join(sb, sde, "000015.npz"))
    assert str(last["sampler"]) == "interpolant_em" and np.all(np.isfinite(last["sample"]))
    pairs = np.load(os.path.join(runs, "pairs_rf1.npz"))  # reflow: pairs drawn, a 2-RF run trained on them
    assert pairs["x0"].shape == pairs["x1"].shape == (20000, 2)
    assert os.path.exists(os.path.join(runs, "rf2", "config.json"))
    cond_root = os.path.join(runs, "fmnist_cond", "samples")
    (cond_dir,) = [os.path.join(cond_root, d) for d in os.listdir(cond_root) if d.endswith("_cfg2")]
    files = {s: np.load(os.path.join(cond_dir, f"{s:06d}.npz")) for s in range(100)}
    assert all(int(f["label"]) == s % 10 and float(f["guidance_scale"]) == 2.0 for s, f in files.items())
    assert str(files[0]["grid"]) == "uniform" and os.path.exists(os.path.join(cond_dir, "grid.png"))
    # The README's Python one-liner: the same samples as the CLI wrote, bit for bit.
    ns = {}
    old = os.getcwd()
    os.chdir(tmp)
    try:
        exec(snippets[0], ns)  # noqa: S102  the README's own code
    finally:
        os.chdir(old)
    x = ns["x"]
    assert x.shape == (100, 8, 8, 1)
    for s in (0, 3, 99):
        np.testing.assert_array_equal(x[s], files[s]["sample"])


REPRO = "## Paper reproductions: conditional flow matching (2-D) and likelihood consistency"
# README command -> the extra arguments that make it test-sized (--out goes to a temporary folder).
REPRO_TINY = {
    "experiments.reproduce_cfm": ["--quick", "--tasks=gaussian_to_moons", "--seeds=42", "--methods=i_cfm"],
    "experiments.reproduce_likelihood": ["--quick", "--skip_fmnist"],
}


@pytest.mark.slow
def test_reproduction_commands_run(tmp_path):
    """The reproduction section's commands, run in-process with their --quick variants."""
    import importlib

    text = open(README).read()
    start = text.index(REPRO)
    section = text[start : text.index("\n## ", start + len(REPRO))]
    cmds = [c.strip() for _, body in _blocks(section) for c in body.splitlines() if c.strip()]
    assert [shlex.split(c)[2] for c in cmds] == list(REPRO_TINY)
    for i, cmd in enumerate(cmds):
        args = shlex.split(cmd)
        assert args[:2] == [".venv/bin/python", "-m"] and args[3].startswith("--out=experiments/results/")
        out = str(tmp_path / str(i))
        res = importlib.import_module(args[2]).main([f"--out={out}", *args[4:], *REPRO_TINY[args[2]]])
        assert res and os.listdir(out)


def test_readme_pretrained_benchmark_quick_command_runs(tmp_path):
    """The README's quick FID-vs-NFE command (random tiny DiT + VAE) runs as written, with 8 samples
    and its output folder in tmp; it writes one finite FID row per sampler x NFE and results.md."""
    import json

    text = open(README).read()
    (cmd,) = [
        line
        for _, body in _blocks(text)
        for line in body.replace("\\\n", " ").splitlines()
        if "experiments.benchmark_samplers" in line and "--quick" in line
    ]
    out = str(tmp_path / "quick")
    args = shlex.split(cmd)
    assert args[:3] == [".venv/bin/python", "-m", "experiments.benchmark_samplers"], cmd
    args = [sys.executable, *args[1:]]
    args = [f"--out={out}" if a.startswith("--out=") else a for a in args]
    args = ["--num_samples=8" if a.startswith("--num_samples=") else a for a in args]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=REPO)
    p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{cmd}\n{p.stderr[-3000:]}"
    rows = [json.loads(line) for line in open(os.path.join(out, "results.jsonl"))]
    assert [(r["sampler"], r["nfe_target"]) for r in rows] == [("ddim", 3), ("dpmpp_2m", 3)]
    assert all(np.isfinite(r["fid"]) and r["num_samples"] == 8 for r in rows)
    assert os.path.isfile(os.path.join(out, "results.md"))
