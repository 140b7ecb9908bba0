"""Issue 13 section 2 (experiments/compare_formulations.py) and reproduction 3d
(experiments/reproduce_sd3_steps.py): their --quick modes, one shared run (module fixture).

Real properties, each independent of the code's own earlier output:
  * training helps: W2 of the trained quick model < W2 of the same network at its initialisation;
  * the NFE column is the samplers' NFE rule written out here (Euler N, DPM-Solver++ 2M N; Heun 2N:
    Karras et al. 2022 Alg. 1 skips the correction only on a last step to sigma = 0 of a model not
    defined there, and neither quick formulation has one: VP-v cosine ends at t_min > 0, rectified
    flow's velocity is defined at t = 0);
  * the floor is the W2 of two independent data draws: positive, and about the W2 of two draws this
    test makes with its own keys;
  * the model's NLL (Dopri5 likelihood ODE) is a cross-entropy, so it exceeds the data's true NLL
    (entropy) on gmm; the fixed-step NLL rows (Euler / Heun / DPM-Solver++ 2M, every step count) are
    finite and their NFE is the count of network calls the library's own tests measure (N, 2N, N);
  * the SD3 table's degradation is W2(low steps) - W2(high steps) read from the csv.
"""

from __future__ import annotations

import os
import shlex

import jax
import numpy as np
import pytest

from experiments import compare_formulations as cf
from experiments import reproduce_sd3_steps as sd3
from tests.test_readme_commands import section_commands

FORMS = ("vp_v_cosine", "rf_logit_normal")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The README's commands of this section, as written, with a temporary output folder: the
    comparison's --quick run, then the SD3 reproduction's --quick run on its table and runs."""
    out = str(tmp_path_factory.mktemp("compare"))
    cmds = section_commands("## Comparing formulations")
    mains = {"experiments.compare_formulations": cf.main, "experiments.reproduce_sd3_steps": sd3.main}
    assert [shlex.split(c)[2] for c in cmds] == list(mains), cmds
    texts = []
    for c in cmds:
        args = shlex.split(c.replace("/tmp/compare_quick", out))
        assert args[:2] == [".venv/bin/python", "-m"] and "--quick" in args, c
        texts.append(mains[args[2]](args[3:]))
    assert sorted(sd3.QUICK_FORMS) == sorted(FORMS)
    return out, texts[-1], cf.read_csv(os.path.join(out, "toy.csv"))


def test_table_shape_and_nfe_rules(quick):
    out, _, rows = quick
    spec = cf.QUICK["toy"]
    w2 = [r for r in rows if r["kind"] == "W2"]
    assert len(w2) == len(FORMS) * (len(cf.FIXED_SAMPLERS) * len(spec["steps"]) + len(spec["tols"]))
    for r in w2:
        assert not r["error"], r
        if r["sampler"] == cf.ADAPTIVE:
            assert r["NFE"] >= 7 and (r["NFE"] - 1) % 6 == 0, r  # 1 + 6 x attempted steps
            continue
        n = r["steps"]
        # Heun: two evaluations per step; both grids here end where the model is defined (VP at
        # t_min > 0; rectified flow predicts the velocity, defined at t = 0), so no Euler last step.
        rule = {"euler": n, "dpmpp_2m": n, "heun": 2 * n}
        assert r["NFE"] == rule[r["sampler"]], r
    md = open(os.path.join(out, "toy.md")).read()
    assert "| formulation | euler N=2 | euler N=4 | heun N=2 |" in md
    assert os.path.isfile(os.path.join(out, "toy_gmm_W2.png"))


def test_training_beats_initialisation_and_floor_is_independent_draws(quick):
    _, _, rows = quick
    from diffusion_jax.data import toy2d
    from diffusion_jax.metrics.ot import w2_exact

    n = cf.QUICK["toy"]["n"]
    a, b = (np.asarray(toy2d.sample_toy("gmm", jax.random.key(k), n)) for k in (101, 202))
    ours = w2_exact(a, b)
    for form in FORMS:
        sel = [r for r in rows if r["formulation"] == form and r["kind"] == "W2"]
        best = min(r["metric"] for r in sel)
        assert best < sel[0]["init"], (form, best, sel[0]["init"])
        floor = sel[0]["floor"]
        assert 0.5 * ours < floor < 2.0 * ours, (floor, ours)
        assert floor < best


def test_nll_against_nfe_for_every_solver(quick):
    out, _, rows = quick
    spec = cf.QUICK["toy"]
    nll = [r for r in rows if r["kind"] == "NLL"]
    assert len(nll) == len(FORMS) * (len(spec["tols"]) + len(cf.FIXED_SAMPLERS) * len(spec["steps"]))
    for r in nll:
        assert not r["error"] and np.isfinite(r["metric"]), r
        if r["sampler"] == cf.ADAPTIVE:
            assert r["metric"] > r["floor"], r  # cross-entropy >= entropy
        else:
            n = r["steps"]
            assert r["NFE"] == {"euler": n, "heun": 2 * n, "dpmpp_2m": n}[r["sampler"]], r
    md = open(os.path.join(out, "toy.md")).read()
    nll_md = md[md.index("### gmm: NLL") :]
    assert "| formulation | euler N=2 | euler N=4 | heun N=2 |" in nll_md and "dopri5 tol=0.01" in nll_md
    assert os.path.isfile(os.path.join(out, "toy_gmm_NLL.png"))


def test_sd3_table_reads_the_comparison(quick):
    out, text, rows = quick
    assert sd3.PUBLISHED in text and "Why: Euler vs a Dopri5 solve" in text
    table = sd3.degradation_table(rows, 2, 4)
    assert {r["formulation"] for r in table} == set(FORMS)
    for r in table:
        lo = next(q for q in rows if q["formulation"] == r["formulation"] and q["sampler"] == "euler"
                  and q["steps"] == 2 and q["kind"] == "W2")  # fmt: skip
        assert r["2 steps"] == lo["metric"] and np.isclose(r["degradation"], r["2 steps"] - r["4 steps"])
    assert sorted(r["rank"] for r in table) == [1, 2]
    assert ("REPRODUCED" in text) or ("NOT reproduced" in text)


def test_bad_arguments_are_refused_before_running(tmp_path, capsys):
    for argv, field in (
        (["--part=cifar", f"--out={tmp_path}"], "--part"),
        (["--datasets=mnist", f"--out={tmp_path}"], "--datasets"),
        (["--formulations=ddpm", f"--out={tmp_path}"], "--formulations"),
        (["--steps=0", f"--out={tmp_path}"], "--steps"),
    ):
        with pytest.raises(SystemExit):
            cf.main(argv)
        assert field in capsys.readouterr().err
    assert not os.listdir(tmp_path)
    with pytest.raises(SystemExit, match="--evaluate_only: no trained run"):
        cf.main(["--evaluate_only", f"--out={tmp_path}", "--formulations=ot_cfm", "--datasets=gmm"])
    assert not os.path.exists(os.path.join(tmp_path, "toy.csv"))
    with pytest.raises(SystemExit):
        sd3.main(["--results=/nonexistent"])
