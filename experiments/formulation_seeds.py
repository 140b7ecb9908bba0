"""The seed spread of the formulation comparison (issue 13 section 2): mean +- std over seeds of every
number `compare_formulations` reports, and whether each conclusion drawn from one seed holds on every
seed.

Input: `compare_formulations` result folders (their `<part>.csv`), one per seed: each made with its own
`--seed=S` and its own `--out` / `--runs` (config.seed drives initialisation, data stream and the
reference draws; config.sampling.seed the sampling noise). The committed full run is seed 0. Only the
(solver, setting) pairs present in every folder are compared, so a cheaper protocol for the extra seeds
(e.g. `--steps=5,50 --tols=0.0001`) is compared on exactly those settings of seed 0's run.

Reported per dataset and metric (W2 / NLL on 2-D, the classifier feature distance on Fashion-MNIST):

  * mean +- sample std (ddof 1) over seeds of each formulation at each setting, and of the floor;
  * per setting, the best formulation on each seed (lowest metric), so a "best" that changes with
    the seed is visible; for the NLL the two lowest, at the adaptive solve only (a fixed-step NLL
    is not a bound);
  * the SD3 degradation (Euler at the fewest minus at the most steps, `reproduce_sd3_steps`) per
    seed: which formulation degrades least, and rf_logit_normal's rank.

    python -m experiments.formulation_seeds --results=experiments/results/compare_formulations,/work/seeds/toy_s1,/work/seeds/toy_s2 --out=experiments/results/compare_formulations

Writes `<part>_seeds.md` and `<part>_seeds.csv` (every row of every seed on the compared settings,
with its seed) in --out.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import numpy as np

from experiments import compare_formulations as cf
from experiments import reproduce_sd3_steps as sd3

KINDS = {"toy": ("W2", "NLL"), "fmnist": ("FD",)}


def _setting(r: dict) -> tuple[str, object]:
    return (r["sampler"], r["tol"] if r["sampler"] == cf.ADAPTIVE else r["steps"])


def _label(setting) -> str:
    s, v = setting
    return f"{s} tol={v:g}" if s == cf.ADAPTIVE else f"{s} N={v}"


def load(folders: list[str], part: str) -> tuple[list[int], list[dict]]:
    """(seeds in folder order, rows of every folder on the settings common to all of them). A folder
    without `<part>.csv`, two folders of one seed, or a folder holding several seeds is an error."""
    seeds, per = [], []
    for d in folders:
        path = os.path.join(d, f"{part}.csv")
        if not os.path.isfile(path):
            raise SystemExit(
                f"--results: {path!r} not found (run experiments.compare_formulations --part={part})"
            )
        rows = [r for r in cf.read_csv(path) if not r["error"]]
        found = sorted({r.get("seed") for r in rows}, key=str)
        if found == [None]:
            raise SystemExit(
                f"--results: {path!r} has no seed column (written before compare_formulations recorded it; re-evaluate with --evaluate_only)"
            )
        if len(found) != 1:
            raise SystemExit(f"--results: {path!r} holds seeds {found}; want one seed per folder")
        if found[0] in seeds:
            raise SystemExit(
                f"--results: seed {found[0]} is in two folders ({folders[seeds.index(found[0])]!r}, {d!r})"
            )
        seeds.append(found[0])
        per.append(rows)
    if len(seeds) < 2:
        raise SystemExit(f"--results: need folders of at least two seeds, got {len(seeds)}")
    keys = [{(r["dataset"], r["formulation"], r["kind"], _setting(r)) for r in rows} for rows in per]
    common = set.intersection(*keys)
    if not common:
        raise SystemExit("--results: the folders share no (dataset, formulation, solver setting)")
    rows = [
        r for rows in per for r in rows if (r["dataset"], r["formulation"], r["kind"], _setting(r)) in common
    ]
    return seeds, rows


def spread(rows: list[dict], seeds: list[int]) -> dict:
    """{(dataset, kind, setting): {formulation: per-seed metric array [S] (seed order)}, plus the
    floor under formulation None (gmm NLL: the true NLL; the W2 floor: two independent data draws)}."""
    out: dict = {}
    for r in rows:
        cell = out.setdefault((r["dataset"], r["kind"], _setting(r)), {})
        cell.setdefault(r["formulation"], np.full(len(seeds), np.nan))[seeds.index(r["seed"])] = r["metric"]
        if r["floor"] is not None:
            cell.setdefault(None, np.full(len(seeds), np.nan))[seeds.index(r["seed"])] = r["floor"]
    return out


def _ms(v: np.ndarray) -> str:
    return f"{np.mean(v):.3f} +- {np.std(v, ddof=1):.3f}"


def report(rows: list[dict], seeds: list[int], part: str, command: str) -> str:
    sp = spread(rows, seeds)
    forms = [f for f in cf.FORMULATIONS if any(f in cell for cell in sp.values())]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = [
        f"# Formulation comparison: the seed spread ({part})\n",
        f"Made by `{command}`.\n",
        f"Seeds {seeds} (one `compare_formulations --seed=S` run each). Mean +- sample std (ddof 1) over "
        f"the {len(seeds)} seeds; `best per seed` lists the formulation with the lowest value on each seed, "
        "in seed order (NLL: the two lowest, at the adaptive solve only: a fixed-step NLL is the "
        "likelihood of a discretised flow, not a bound, and can fall below the true NLL).",
    ]
    for ds in datasets:
        for kind in KINDS[part]:
            order = [*cf.FIXED_SAMPLERS, cf.ADAPTIVE]  # fixed steps ascending, then tolerances descending
            settings = sorted(
                {s for (d, k, s) in sp if d == ds and k == kind},
                key=lambda s: (order.index(s[0]), -s[1] if s[0] == cf.ADAPTIVE else s[1]),
            )
            if not settings:
                continue
            cols = ["formulation", *(_label(s) for s in settings)]
            body = [
                {"formulation": f, **{_label(s): _ms(sp[(ds, kind, s)][f]) for s in settings}} for f in forms
            ]
            if all(None in sp[(ds, kind, s)] for s in settings):
                name = "true NLL" if kind == "NLL" else "floor"
                body.append(
                    {"formulation": name, **{_label(s): _ms(sp[(ds, kind, s)][None]) for s in settings}}
                )
            # NLL: only the adaptive solve is the model's cross-entropy; a fixed-step value is the
            # likelihood of a discretised flow and can fall below the true NLL, so "lowest" ranks nothing.
            top = 2 if kind == "NLL" else 1
            best = {"formulation": "two lowest per seed" if top == 2 else "best per seed"}
            for s in settings:
                if kind == "NLL" and s[0] != cf.ADAPTIVE:
                    best[_label(s)] = "-"
                    continue
                vals = np.stack([sp[(ds, kind, s)][f] for f in forms])
                lowest = np.argsort(vals, axis=0, kind="stable")[:top]  # [top, seeds]
                best[_label(s)] = ", ".join(
                    " + ".join(forms[i] for i in lowest[:, j]) for j in range(len(seeds))
                )
            body.append(best)
            lines.append(cf.table(body, cols, f"{ds}: {kind}"))
        lines += _degradation(rows, seeds, ds, part)
    return "\n".join(lines) + "\n"


def _degradation(rows, seeds, ds, part) -> list[str]:
    """SD3's degradation (Euler fewest minus most steps) per seed, ranked as `reproduce_sd3_steps` does."""
    kind = sd3.METRIC[part]
    steps = sorted(
        {r["steps"] for r in rows if r["dataset"] == ds and r["kind"] == kind and r["sampler"] == sd3.SAMPLER}
    )
    if len(steps) < 2:
        return []
    low, high = steps[0], steps[-1]
    body = []
    for s in seeds:
        table = [
            t
            for t in sd3.degradation_table([r for r in rows if r["seed"] == s], low, high)
            if t["dataset"] == ds
        ]
        least = min(table, key=lambda t: t["rank"])
        claimed = next((t["rank"] for t in table if t["formulation"] == sd3.CLAIMED), "-")
        body.append({"seed": s, "degrades least": f"{least['formulation']} ({least['degradation']:+.3f})",
                     f"{sd3.CLAIMED} rank": f"{claimed} of {len(table)}"})  # fmt: skip
    return [cf.table(body, list(body[0]), f"{ds}: SD3 degradation, Euler {low} vs {high} steps ({kind})")]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--results", required=True, help="comma-separated compare_formulations folders, one per seed"
    )
    p.add_argument("--out", required=True, help="where <part>_seeds.md / .csv go")
    p.add_argument("--part", default="toy", help=f"valid: {list(KINDS)}")
    args = p.parse_args(argv)
    if args.part not in KINDS:
        p.error(f"--part={args.part!r} is invalid; valid choices: {list(KINDS)}")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    command = "python -m experiments.formulation_seeds " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    seeds, rows = load([d for d in args.results.split(",") if d], args.part)
    text = report(rows, seeds, args.part, command)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.part}_seeds.md"), "w") as f:
        f.write(text)
    cf.write_csv(os.path.join(args.out, f"{args.part}_seeds.csv"), rows)
    print(text)
    return text


if __name__ == "__main__":
    main()
