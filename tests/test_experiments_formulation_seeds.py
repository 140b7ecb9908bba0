"""experiments/formulation_seeds.py: the seed spread of the formulation comparison, on result folders
this test writes (three seeds, two datasets, three formulations) with values drawn here, so every
expected number is computed independently of the script (numpy mean / std, argmin, differences)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from experiments import compare_formulations as cf
from experiments import formulation_seeds as fs

FORMS = ("vp_eps", "rf_logit_normal", "ot_cfm")
DATASETS = ("gmm", "moons")
SEEDS = (0, 3, 7)


def _rows(seed: int, rng, extra: bool) -> list[dict]:
    rows = []
    settings = [("euler", 5, "-"), ("euler", 50, "-"), ("dopri5", "-", 1e-4)]
    if extra:  # a setting only this folder has: must be left out of the comparison
        settings.append(("heun", 10, "-"))
    for ds in DATASETS:
        for form in FORMS:
            for kind in ("W2", "NLL"):
                for sampler, steps, tol in settings:
                    rows.append({"dataset": ds, "formulation": form, "seed": seed, "kind": kind,
                                 "sampler": sampler, "steps": steps, "tol": tol, "NFE": 5,
                                 "metric": float(rng.uniform(0.1, 2.0)), "floor": 0.05 + seed,
                                 "init": None, "error": ""})  # fmt: skip
    return rows


@pytest.fixture()
def folders(tmp_path):
    rng = np.random.default_rng(0)
    dirs, data = [], {}
    for i, seed in enumerate(SEEDS):
        d = str(tmp_path / f"s{seed}")
        os.makedirs(d)
        rows = _rows(seed, rng, extra=i == 0)
        cf.write_csv(os.path.join(d, "toy.csv"), rows)
        dirs.append(d)
        data[seed] = rows
    return dirs, data


def _value(data, seed, ds, form, kind, sampler, setting):
    return next(r["metric"] for r in data[seed] if r["dataset"] == ds and r["formulation"] == form
                and r["kind"] == kind and r["sampler"] == sampler
                and (r["tol"] if sampler == "dopri5" else r["steps"]) == setting)  # fmt: skip


def test_mean_std_best_and_degradation_per_seed(folders, tmp_path):
    dirs, data = folders
    out = str(tmp_path / "out")
    text = fs.main([f"--results={','.join(dirs)}", f"--out={out}"])
    assert text == open(os.path.join(out, "toy_seeds.md")).read()
    # the csv holds every seed's rows on the common settings only (heun N=10 is in one folder)
    rows = cf.read_csv(os.path.join(out, "toy_seeds.csv"))
    assert len(rows) == len(SEEDS) * len(DATASETS) * len(FORMS) * 2 * 3
    assert {r["seed"] for r in rows} == set(SEEDS) and "heun" not in text
    # mean +- std (ddof 1) of one cell, computed here
    v = np.array([_value(data, s, "moons", "ot_cfm", "W2", "euler", 50) for s in SEEDS])
    section = text[text.index("### moons: W2") :]
    row = next(line for line in section.splitlines() if line.startswith("| ot_cfm |"))
    assert f"{v.mean():.3f} +- {v.std(ddof=1):.3f}" in row
    assert "| floor |" in section  # floors 0.05 + seed: mean +- std of 0.05, 3.05, 7.05
    f = np.array([0.05 + s for s in SEEDS])
    assert f"{f.mean():.3f} +- {f.std(ddof=1):.3f}" in section.split("### moons: NLL")[0]
    # best per seed on moons W2 at Euler 5; the two lowest NLL per seed at dopri5 (fixed-step: "-")
    best = [
        FORMS[int(np.argmin([_value(data, s, "moons", f, "W2", "euler", 5) for f in FORMS]))] for s in SEEDS
    ]
    best_row = next(line for line in section.splitlines() if line.startswith("| best per seed |"))
    assert best_row.split(" | ")[1] == ", ".join(best)
    two = []
    for s in SEEDS:
        v = {f: _value(data, s, "gmm", f, "NLL", "dopri5", 1e-4) for f in FORMS}
        two.append(" + ".join(sorted(v, key=v.get)[:2]))
    nll = text[text.index("### gmm: NLL") :]
    two_row = next(line for line in nll.splitlines() if line.startswith("| two lowest per seed |"))
    assert two_row.split(" | ")[1:] == ["-", "-", ", ".join(two) + " |"]
    # SD3 degradation per seed: W2(Euler 5) - W2(Euler 50), least one named with its value
    deg = text[text.index("### gmm: SD3 degradation, Euler 5 vs 50 steps (W2)") :]
    for s in SEEDS:
        d = {
            f: _value(data, s, "gmm", f, "W2", "euler", 5) - _value(data, s, "gmm", f, "W2", "euler", 50)
            for f in FORMS
        }
        least = min(d, key=d.get)
        rank = 1 + sorted(d.values()).index(d["rf_logit_normal"])
        assert f"| {s} | {least} ({d[least]:+.3f}) | {rank} of 3 |" in deg


def test_bad_folders_are_refused(folders, tmp_path, capsys):
    dirs, _ = folders
    with pytest.raises(SystemExit, match="seed 0 is in two folders"):
        fs.main([f"--results={dirs[0]},{dirs[0]}", f"--out={tmp_path}"])
    with pytest.raises(SystemExit, match="at least two seeds"):
        fs.main([f"--results={dirs[0]}", f"--out={tmp_path}"])
    with pytest.raises(SystemExit, match="not found"):
        fs.main([f"--results={dirs[0]},{tmp_path}/none", f"--out={tmp_path}"])
    with pytest.raises(SystemExit):
        fs.main([f"--results={dirs[0]},{dirs[1]}", f"--out={tmp_path}", "--part=cifar"])
    assert "--part='cifar' is invalid; valid choices" in capsys.readouterr().err
    # a csv of several seeds, and one written before the seed column existed
    mixed = tmp_path / "mixed"
    os.makedirs(mixed)
    rows = cf.read_csv(os.path.join(dirs[0], "toy.csv")) + cf.read_csv(os.path.join(dirs[1], "toy.csv"))
    cf.write_csv(str(mixed / "toy.csv"), rows)
    with pytest.raises(SystemExit, match="want one seed per folder"):
        fs.main([f"--results={mixed},{dirs[2]}", f"--out={tmp_path}"])
    old = tmp_path / "old"
    os.makedirs(old)
    lines = open(os.path.join(dirs[0], "toy.csv")).read().splitlines()
    strip = lambda line: ",".join(c for i, c in enumerate(line.split(",")) if i != 2)  # noqa: E731
    open(old / "toy.csv", "w").write("\n".join(strip(line) for line in lines) + "\n")
    with pytest.raises(SystemExit, match="no seed column"):
        fs.main([f"--results={old},{dirs[2]}", f"--out={tmp_path}"])


def test_seed_flag_reaches_the_training_command(tmp_path, capsys):
    args, parts, steps, tols = cf.parse_args([f"--out={tmp_path}", "--seed=4", "--datasets=gmm"])
    spec = cf.protocol(args, "toy", steps, tols)
    cmd = cf.train_cmd("toy", "ot_cfm", "gmm", str(tmp_path / "r"), 10, spec["overrides"])
    assert "--config.seed=4" in cmd and "--config.sampling.seed=4" in cmd
    args, *rest = cf.parse_args([f"--out={tmp_path}"])
    assert not any("seed" in o for o in cf.protocol(args, "toy", None, None)["overrides"])
    with pytest.raises(SystemExit):
        cf.parse_args([f"--out={tmp_path}", "--seed=-1"])
    assert "--seed must be >= 0" in capsys.readouterr().err
