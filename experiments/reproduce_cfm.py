"""Reproduction 3a: I-CFM, OT-CFM and SB-CFM on the 2-D tasks of Tong et al. (TMLR 2024, Table 2).

Protocol (the paper's runner, atong01/conditional-flow-matching `runner/configs`): the 3 x 64 SELU
MLP (`configs/models/mlp.py:cfm`, raw t appended), AdamW lr 1e-3 weight decay 1e-5, batch 512, no
gradient clipping, path noise sigma 0.1 (I-CFM: eq. 14; OT-CFM: exact minibatch OT pairs, eq. 18),
SB-CFM with the runner's `sbcfm.yaml` sigma = 1 (entropic plan with reg 2 sigma^2 and the Brownian
bridge c(t) = sigma sqrt(t (1 - t)); a velocity head only, ODE sampling as in the paper), 20k steps
(the runner's 1000 epochs of 10,000 points at batch 512 are 19.5k), seeds 42-46, on the runner's
fixed data sets (`experiments.cfm_datasets`: definitions there and in the results file). Raw
weights are scored (the paper has no EMA) and an EMA (decay 0.999) beside them.

Every objective, coupling and interpolant is the library's (configs/toy2d/cfm.py with its fields
switched: `objective.coupling`, `path_sigma`, `path_noise`); this script only feeds the fixed data
sets in (exact OT pairs made on the host, `couplings.pair_batch_exact_ot`) and scans the steps.

Metrics, mean +- std over seeds:
  * W2 (exact OT, POT) between n generated points and n target points: n = 1000 against the
    held-out test set (the paper's setting) and n = 10,000 against a fresh draw of the target
    definition; beside it the sampling floor, W2 between two independent n-draws of the target.
  * Normalised path energy (Tong et al. 2024, Sec. 5.1): NPE = |PE - W2^2(q0, q1)| / W2^2(q0, q1),
    PE = E_{x(0) ~ q0} int_0^1 ||v(x(t), t)||^2 dt along the model's ODE, W2^2(q0, q1) the squared
    exact-OT distance between the 1000 test source points and the 1000 test target points. PE is
    integrated by the trapezoid rule on 101 equally spaced times of the dopri5 dense solution.
  * dopri5 NFE (rtol = atol = 1e-5, the runner's FlowSolver tolerances; one step-size sequence for
    the batch of 1000, as torchdyn solves it), counted as 1 + 6 x attempted steps.

    python -m experiments.reproduce_cfm --out=experiments/results/cfm     # full protocol (45 runs)
    python -m experiments.reproduce_cfm --quick --out=/tmp/cfm            # seconds: tiny budget
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cfm_datasets as D

METHODS = {
    # name -> (coupling, path_noise, sigma)
    "i_cfm": ("independent", "constant", 0.1),
    "ot_cfm": ("ot_exact", "constant", 0.1),
    "sb_cfm": ("schrodinger", "bridge", 1.0),
}
TASK_LABELS = {
    "gaussian_to_8gaussians": "N -> 8gaussians",
    "gaussian_to_moons": "N -> moons",
    "moons_to_8gaussians": "moons -> 8gaussians",
}
# Tong et al. (TMLR 2024), Table 2 (W2, mean +- std over 5 seeds): filled in from the published
# table where found; None = not found (said so in the results, never invented).
PUBLISHED: dict[tuple[str, str], dict] = {}
PUBLISHED_SOURCE = "not found (see the results notes)"


def run_config(method: str, steps: int, batch: int = 512):
    """configs/toy2d/cfm.py with the method's fields and the paper's optimizer switched on."""
    from configs.toy2d.cfm import get_config

    if method not in METHODS:
        raise ValueError(f"method {method!r} unknown; valid: {sorted(METHODS)}")
    coupling, noise, sigma = METHODS[method]
    cfg = get_config()
    o = cfg.objective
    o.coupling, o.coupling_kwargs, o.path_noise, o.path_sigma = coupling, {}, noise, sigma
    o.score_head = False
    t = cfg.training
    t.optimizer, t.lr, t.weight_decay, t.grad_clip = "adamw", 1e-3, 1e-5, 0.0
    t.ema_decays, t.num_steps = (0.999,), int(steps)
    cfg.data.batch_size = int(batch)
    return cfg


def _batches(data: dict, steps: int, batch: int, rng: np.random.Generator, ot: bool):
    """Host batches {'x' [steps, B, 2] target, 'noise' [steps, B, 2] source}: epochs of shuffled
    fixed training rows (drop_last, as the runner's loader), a fresh N(0, I) source where the task's
    source is Gaussian, exact-OT pairs on the host for OT-CFM."""
    from diffusion_jax.couplings import pair_batch_exact_ot

    def stream(x):
        per = len(x) // batch
        while True:
            p = rng.permutation(len(x))
            for i in range(per):
                yield x[p[i * batch : (i + 1) * batch]]

    tgt = stream(data["train_tgt"])
    src = stream(data["train_src"]) if "train_src" in data else None
    while True:
        xs, ns = [], []
        for _ in range(steps):
            x = next(tgt)
            n = next(src) if src is not None else rng.standard_normal(x.shape).astype(np.float32)
            b = pair_batch_exact_ot({"x": x, "noise": n}, rng) if ot else {"noise": n}
            xs.append(x)
            ns.append(b["noise"])
        yield np.stack(xs), np.stack(ns)


def train(method: str, task: str, seed: int, steps: int, batch: int = 512, chunk: int = 250, data=None):
    """Train one run; returns (denoiser, raw params, ema params, seconds, data)."""
    import optax

    from diffusion_jax import objectives
    from diffusion_jax.models.functional import init_split, make_net_fn
    from diffusion_jax.training.state import make_optimizer

    cfg = run_config(method, steps, batch)
    data = D.task_data(task, seed) if data is None else data
    graphdef, params, rest = init_split(cfg.model, seed=seed)
    net_fn = make_net_fn(graphdef, rest)
    loss_fn, den = objectives.make_loss(cfg.objective, net_fn)
    tx = make_optimizer(cfg.training)
    decay = float(cfg.training.ema_decays[0])

    def one(carry, inp):
        p, e, s, key = carry
        x, n = inp
        key, sub = jax.random.split(key)
        (_, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, {"x": x, "noise": n}, sub)
        upd, s = tx.update(g, s, p)
        p = optax.apply_updates(p, upd)
        e = jax.tree.map(lambda a, b: decay * a + (1.0 - decay) * b, e, p)
        return (p, e, s, key), None

    run_chunk = jax.jit(lambda c, xs, ns: jax.lax.scan(one, c, (xs, ns))[0])
    carry = (params, jax.tree.map(jnp.copy, params), tx.init(params), jax.random.key(seed))
    rng = np.random.default_rng(seed)
    t0 = time.time()
    done = 0
    gen = _batches(data, chunk, batch, rng, method == "ot_cfm")
    while done < steps:
        xs, ns = next(gen)
        k = min(chunk, steps - done)
        carry = run_chunk(carry, jnp.asarray(xs[:k]), jnp.asarray(ns[:k]))
        done += k
    jax.block_until_ready(carry)
    return den, carry[0], carry[1], time.time() - t0, data


def solve(den, params, z0: np.ndarray, rtol: float = 1e-5, num_times: int = 101):
    """dopri5 from the source (t = 1) to the data (t = 0): (samples [n, 2], NFE, path energy per
    sample [n] by the trapezoid rule on `num_times` dense-output times)."""
    from diffusion_jax.samplers.adaptive import Dopri5

    d = den.replace(params=params)
    grid = jnp.linspace(1.0, 0.0, num_times)
    out = Dopri5(rtol=rtol, atol=rtol, per_sample=False).run(d, jnp.asarray(z0), grid, return_trajectory=True)
    traj = out.trajectory  # [T, n, 2]
    v = jax.vmap(lambda z, t: d.velocity(z, jnp.full((z.shape[0],), t, z.dtype)))(traj, grid)
    e = jnp.sum(v**2, axis=-1)  # [T, n]
    pe = jnp.sum(0.5 * (e[1:] + e[:-1]), axis=0) / (num_times - 1)
    return np.asarray(out.samples), int(out.nfe), np.asarray(pe)


def evaluate(den, params, data: dict, task: str, seed: int, n_big: int) -> dict:
    """W2 at n = 1000 (test set) and n = n_big (fresh draws), NPE, NFE for one set of weights."""
    from diffusion_jax.metrics.ot import w2_exact

    src_name, tgt_name = D.TASKS[task]
    test_src = data.get("test_src", D.draw("gaussian", len(data["test_tgt"]), 7000 + seed))
    x, nfe, pe = solve(den, params, test_src)
    w2sq_st = w2_exact(test_src, data["test_tgt"]) ** 2
    out = {
        "w2_1000": w2_exact(x, data["test_tgt"]),
        "npe": abs(float(np.mean(pe)) - w2sq_st) / w2sq_st,
        "nfe": nfe,
        "finite": bool(np.isfinite(x).all()),
    }
    if n_big:
        z = D.draw(src_name, n_big, 8000 + seed)
        xb = solve(den, params, z, num_times=2)[0]
        out[f"w2_{n_big}"] = w2_exact(xb, D.draw(tgt_name, n_big, 9000 + seed))
    return out


def sampling_floor(task: str, n: int, seed: int) -> float:
    """W2 between two independent n-draws of the task's target definition (a perfect generator)."""
    from diffusion_jax.metrics.ot import w2_exact

    tgt = D.TASKS[task][1]
    return w2_exact(D.draw(tgt, n, 11000 + seed), D.draw(tgt, n, 12000 + seed))


def _ms(vals) -> str:
    v = np.asarray([x for x in vals if x is not None], float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v[0]:.3f}"


def markdown(rows: list[dict], n_big: int, meta: dict) -> str:
    """The results table: one row per (task, method), ours (raw and EMA) beside the published W2."""
    head = [
        "task",
        "method",
        "published W2 (n=1000)",
        "W2 n=1000 raw",
        "W2 n=1000 EMA",
        "floor n=1000",
        f"W2 n={n_big} raw",
        f"floor n={n_big}",
        "NPE raw",
        "NPE EMA",
        "dopri5 NFE raw",
        "seeds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in TASK_LABELS:
        for m in METHODS:
            rs = [r for r in rows if r["task"] == task and r["method"] == m]
            if not rs:
                continue
            pub = PUBLISHED.get((task, m))
            g = lambda k, w: [r[w].get(k) for r in rs]  # noqa: E731
            cells = [
                TASK_LABELS[task],
                m,
                pub["w2"] if pub else "not found",
                _ms(g("w2_1000", "raw")),
                _ms(g("w2_1000", "ema")),
                _ms([r["floor_1000"] for r in rs]),
                _ms(g(f"w2_{n_big}", "raw")),
                _ms([r.get(f"floor_{n_big}") for r in rs]),
                _ms(g("npe", "raw")),
                _ms(g("npe", "ema")),
                _ms(g("nfe", "raw")),
                ",".join(str(r["seed"]) for r in rs),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def ordering(rows: list[dict], key: str = "w2_1000", weights: str = "raw") -> dict:
    """{task: (mean I-CFM W2, mean OT-CFM W2, I-CFM > OT-CFM)} over the seeds present for both."""
    out = {}
    for task in TASK_LABELS:
        by = {
            m: {r["seed"]: r[weights][key] for r in rows if r["task"] == task and r["method"] == m}
            for m in ("i_cfm", "ot_cfm")
        }
        common = sorted(set(by["i_cfm"]) & set(by["ot_cfm"]))
        i, o = [by["i_cfm"][s] for s in common], [by["ot_cfm"][s] for s in common]
        if i and o:
            out[task] = (float(np.mean(i)), float(np.mean(o)), bool(np.mean(i) > np.mean(o)))
    return out


def _parse_list(s: str, valid, name: str) -> list[str]:
    items = [x for x in s.split(",") if x]
    bad = [x for x in items if x not in valid]
    if bad or not items:
        raise SystemExit(f"--{name}: {bad or s!r} unknown; valid: {sorted(valid)}")
    return items


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (cfm.md, runs.jsonl, meta.json)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--tasks", default=",".join(TASK_LABELS))
    p.add_argument("--seeds", default="42,43,44,45,46")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--n_big", type=int, default=10_000, help="the larger evaluation n (0: skip)")
    p.add_argument("--quick", action="store_true", help="tiny budget: 60 steps, batch 64, n_big 0")
    p.add_argument("--report_only", action="store_true", help="rewrite cfm.md from --out's runs.jsonl")
    a = p.parse_args(argv)
    methods = _parse_list(a.methods, METHODS, "methods")
    tasks = _parse_list(a.tasks, TASK_LABELS, "tasks")
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {a.seeds!r}") from None
    if a.steps < 1 or a.batch < 2 or a.n_big < 0 or not seeds:
        raise SystemExit("--steps >= 1, --batch >= 2, --n_big >= 0 and at least one seed are required")
    steps, batch, n_big = (60, 64, 0) if a.quick else (a.steps, a.batch, a.n_big)
    os.makedirs(a.out, exist_ok=True)
    rows, log = [], os.path.join(a.out, "runs.jsonl")
    meta = dict(
        steps=steps, batch=batch, seeds=seeds, methods=methods, tasks=tasks, n_big=n_big, quick=a.quick
    )
    if a.report_only:
        with open(log) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return report(rows, a.out, meta)
    open(log, "w").close()
    for seed in seeds:
        for task in tasks:
            data = D.task_data(task, seed)
            floors = {"floor_1000": sampling_floor(task, 1000, seed)}
            if n_big:
                floors[f"floor_{n_big}"] = sampling_floor(task, n_big, seed)
            for m in methods:
                den, raw, ema, secs, _ = train(m, task, seed, steps, batch, data=data)
                row = dict(task=task, method=m, seed=seed, steps=steps, batch=batch, train_seconds=secs)
                row.update(floors)
                row["raw"] = evaluate(den, raw, data, task, seed, n_big)
                row["ema"] = evaluate(den, ema, data, task, seed, 0)  # n_big: raw weights only (cost)
                rows.append(row)
                with open(log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    return report(rows, a.out, meta)


def report(rows: list[dict], out: str, meta: dict) -> dict:
    """Write cfm.md and meta.json from the run rows; return rows, ordering and the table."""
    n_big = meta["n_big"] or 10_000
    text = markdown(rows, n_big, meta)
    a = argparse.Namespace(out=out)
    with open(os.path.join(a.out, "cfm.md"), "w") as f:
        f.write(f"Tong et al. 2024 Table 2 reproduction; meta: `{json.dumps(meta)}`.\n\n{text}\n")
        f.write("Datasets:\n" + D.definitions_markdown() + "\n")
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump({**meta, "ordering_w2_1000_raw": ordering(rows)}, f, indent=1)
    print(text)
    return {"rows": rows, "ordering": ordering(rows), "markdown": text}


if __name__ == "__main__":
    main()
