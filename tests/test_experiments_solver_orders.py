"""Reproduction 3b (experiments/reproduce_solver_orders.py): --quick reruns a small benchmark and puts
the measured orders beside the theoretical ones; first- and second-order methods must measure within
0.5 of their order on the logSNR grid (float64, exact mixture denoiser, Dopri8 reference)."""

from __future__ import annotations

import csv
import os

from experiments import reproduce_solver_orders as rso

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_measures_the_theoretical_orders(tmp_path):
    out = str(tmp_path / "orders")
    text = rso.main(["--quick", f"--out={out}"])
    assert "| heun | 2 |" in text
    with open(os.path.join(out, "orders_vs_theory.csv")) as f:
        rows = list(csv.reader(f))
    header, body = rows[0], {r[0]: r for r in rows[1:]}
    assert header[:3] == ["sampler", "theory", "measured (logsnr)"]
    assert sorted(body) == ["dpm_solver_2", "dpmpp_2m", "euler", "heun"]
    for name, r in body.items():
        assert abs(float(r[2]) - rso.THEORY[name][0]) < 0.5, (name, r)


def test_committed_table_reads_the_committed_benchmark():
    orders = rso.read_orders(os.path.join(REPO, rso.DEFAULT_RESULTS))
    header, rows = rso.table(orders)
    assert len(rows) == 14 and header[1] == "theory"
    committed = open(os.path.join(REPO, "experiments", "results", "solver_orders", "orders.md")).read()
    assert rso.markdown(header, rows) in committed
