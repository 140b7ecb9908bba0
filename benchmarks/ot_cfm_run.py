r"""A whole OT-CFM training run: ours (`training.loop.train`) vs torchcfm's README loop, same machine.

OT-CFM (Tong et al. 2024, "Improving and generalizing flow-based generative models with minibatch
optimal transport", TMLR): flow matching from 8 Gaussians to two moons, each minibatch re-paired by
exact OT, path noise sigma = 0.1, batch `--batch` (512), `--steps` (20,000) Adam steps at lr 1e-3,
the 3 x 64 SELU MLP with the time as an extra input (torchcfm's `MLP(dim=2, time_varying=True)`).

* **torchcfm** (1.0.7, the `bench` extra): its README's OT-CFM training loop verbatim in structure:
  `sample_8gaussians` / `sample_moons`, `ExactOptimalTransportConditionalFlowMatcher(sigma=0.1)`
  (POT's `ot.emd` on the host, pairs drawn from the plan), forward, MSE, backward, `Adam.step()`,
  one process, torch's default threads.
* **ours**: `diffusion_jax.training.loop.train` on `configs/toy2d/cfm.py:moons` with
  ``data.pair_with=8gaussians``, ``objective.coupling=ot_exact`` (the exact permutation, paired in
  background threads while the previous step runs: ``training.prefetch = 2``), one device, float32.
  It does more per step than the baseline (gradient clipping, an EMA copy, the non-finite guard),
  plus its compilation and a final checkpoint, all inside the timed wall clock.

Both runs are timed end to end in one process, one after the other (torchcfm first), with the load
average recorded around each. Sanity (asserted): both final losses are finite and below the first
logged ones. Reported: wall seconds, ms per step, and torchcfm / ours.

    .venv/bin/python -m benchmarks.ot_cfm_run                 # 20k steps each (long on 2 shared cores)
    .venv/bin/python -m benchmarks.ot_cfm_run --steps 2000    # N steps each: the per-step ratio
    .venv/bin/python -m benchmarks.ot_cfm_run --quick         # tiny, a smoke test
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence

import jax
import numpy as np

from benchmarks import _common as C

NAME = "ot_cfm_run"
SIGMA = 0.1
LR = 1e-3


def run_torchcfm(steps: int, batch: int, seed: int = 0) -> dict:
    """torchcfm's README OT-CFM loop; returns wall seconds and the first / last losses."""
    import torch
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher
    from torchcfm.models.models import MLP
    from torchcfm.utils import sample_8gaussians, sample_moons

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (torchcfm draws its plan samples with np.random)
    t0 = time.perf_counter()
    model = MLP(dim=2, time_varying=True, w=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=SIGMA)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        x0 = sample_8gaussians(batch)
        x1 = sample_moons(batch)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        vt = model(torch.cat([xt, t[:, None]], dim=-1))
        loss = torch.mean((vt - ut) ** 2)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "first_loss": float(np.mean(losses[:10])),
        "last_loss": float(np.mean(losses[-10:])),
    }


def ours_config(steps: int, batch: int):
    """configs/toy2d/cfm.py:moons as OT-CFM from 8 Gaussians, sigma 0.1, logging every ~steps/10."""
    from configs.toy2d import cfm

    cfg = cfm.get_config("moons")
    cfg.data.pair_with = "8gaussians"
    cfg.data.batch_size = batch
    cfg.objective.coupling = "ot_exact"
    cfg.objective.path_sigma = SIGMA
    t = cfg.training
    t.num_steps, t.lr = steps, LR
    t.log_every = max(1, steps // 10)
    t.ckpt_every, t.sample_every, t.eval_every = steps, 0, 0
    return cfg


def run_ours(steps: int, batch: int, quick: bool = False) -> dict:
    """`training.loop.train` of `ours_config` on one device in a fresh workdir; wall seconds, losses."""
    from diffusion_jax.training import loop
    from diffusion_jax.training.logging import read_jsonl

    cfg = ours_config(steps, batch)
    cfg.training.fast_compile = quick
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = loop.train(cfg, os.path.join(tmp, "run"), progress=False, devices=jax.devices()[:1])
        wall = time.perf_counter() - t0
        logged = [r["train/loss"] for r in read_jsonl(os.path.join(tmp, "run", "metrics.jsonl"))]
    assert result.step == steps, result.step
    return {"wall_s": wall, "first_loss": logged[0], "last_loss": logged[-1]}


def run(args) -> dict:
    rows = {}
    for name, fn in (("torchcfm", run_torchcfm), ("ours", run_ours)):
        load0 = os.getloadavg()[0]
        kw = {"quick": True} if (name == "ours" and args.quick) else {}
        rec = fn(args.steps, args.batch, **kw)
        rec.update(
            load_before=load0, load_after=os.getloadavg()[0], ms_per_step=1e3 * rec["wall_s"] / args.steps
        )
        assert np.isfinite(rec["last_loss"]), (name, rec)
        if not args.quick:  # a few steps need not lower the loss
            assert rec["last_loss"] < rec["first_loss"], (name, rec)
        rows[name] = rec
        print(f"{name}: {rec['wall_s']:.1f} s for {args.steps} steps ({rec['ms_per_step']:.3g} ms/step)")
    return {
        "steps": args.steps,
        "batch": args.batch,
        "rows": rows,
        "torchcfm_over_ours": rows["torchcfm"]["wall_s"] / rows["ours"]["wall_s"],
    }


def report(res: dict, args) -> list[str]:
    rows = [
        [
            name,
            f"{r['wall_s']:.1f}",
            f"{r['ms_per_step']:.3g}",
            f"{r['first_loss']:.3g} -> {r['last_loss']:.3g}",
            f"{r['load_before']:.1f} / {r['load_after']:.1f}",
        ]
        for name, r in res["rows"].items()
    ]
    return [
        f"## {res['steps']} OT-CFM steps at batch {res['batch']}, end to end\n\n"
        + C.md_table(["run", "wall (s)", "ms / step", "loss (first -> last)", "load before / after"], rows)
        + f"\n\ntorchcfm / ours (wall): **{C.fmt_ratio(res['torchcfm_over_ours'])}**"
    ]


def parse_args(argv: Sequence[str] | None):
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--steps", type=int, default=None)
    pre.add_argument("--batch", type=int, default=512)
    known, rest = pre.parse_known_args(argv)
    args = C.base_args(__doc__, rest)
    args.batch = known.batch
    args.steps = known.steps or (20 if args.quick else 20_000)
    if args.quick:
        args.batch = min(args.batch, 64)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run both, print the Markdown report and write it (+ JSON) to `--out`."""
    return C.run_main(NAME, "Whole OT-CFM run: ours vs torchcfm", parse_args, run, report, argv)


if __name__ == "__main__":
    main()
