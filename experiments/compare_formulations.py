"""Issue 13, section 2: one network, six formulations, four ODE solvers, quality against NFE.

Every formulation (`configs/toy2d/{vp_eps,vp_v_cosine,edm,rf_uniform,rf_logit_normal,ot_cfm}.py`,
and the same names under `configs/fashion_mnist/`) trains the same network on the same data stream
with the same optimizer, budget and seed through `python -m diffusion_jax.train` (the only config
differences are the objective preset and the path's default grid, `configs/toy2d/common.py`); the
budget overrides below are applied to every formulation alike. Then every run is sampled from its
EMA weights through the one sampling engine (`training.periodic.plan_for` -> `samplers.seeds`:
seeds 0..n-1, base seed `sampling.seed`) with

  * Euler, Heun (Karras et al. 2022, Alg. 1) and DPM-Solver++ 2M (Lu et al. 2022b, Alg. 2) at each
    step count in `--steps`, on the formulation's own grid; NFE = the sampler's NFE rule
    (`Sampler.nfe(num_steps)`; Heun 2N, or 2N - 1 on a last step to sigma = 0 of a model not defined there);
  * Dopri5 (Dormand & Prince 1980; adaptive, diffrax) at each tolerance in `--tols`; NFE measured
    (1 + 6 x attempted steps, the maximum over the batch; `samplers/adaptive.py`).

2-D (`--part=toy`): exact W2 (POT, `metrics.ot.w2_exact`) between n samples and n fresh data points
(`periodic.reference_samples`), beside the *sampling floor*: the W2 between two independent draws
of n data points (a perfect generator scores about this at this n). W2 of the untrained (step-0
initialisation) network is listed too. NLL: the probability-flow ODE likelihood (Song et al. 2021
App. D.2, exact divergence) of fresh data points, in nats per point, against NFE for the same four
solvers: Euler, Heun and DPM-Solver++ 2M on the augmented ODE (z, int div v) from data to noise on
the formulation's own grid reversed, at each step count (`likelihood_fixed.log_likelihood_fixed`;
NFE = network calls, each with its divergence: Euler N, Heun 2N, DPM-Solver++ 2M N), and Dopri5 at
each tolerance (`likelihood.log_likelihood`, mean measured NFE); on `gmm` (analytic 8-mode mixture)
beside the true NLL -E log p_data(x) of the same points. A fixed-step value is the likelihood of a
discretised flow, not a bound: it can lie below the true NLL.

Fashion-MNIST (`--part=fmnist`): the Frechet distance of the penultimate features of the project's
Fashion-MNIST classifier (`metrics.classifier`, `make fmnist_classifier`) between n samples and n
test images, beside its floor (n train images vs the same n test images), against NFE; a grid of
samples per formulation (`fmnist_samples.png`) to check by eye that the numbers score clothing.
Fixed-step settings above `--max_nfe` are skipped (listed as such).

    python -m experiments.compare_formulations --part=toy --out=experiments/results/compare_formulations
    python -m experiments.compare_formulations --part=fmnist --out=experiments/results/compare_formulations
    python -m experiments.compare_formulations --quick --out=/tmp/compare_quick   # seconds; the tests

The defaults are the full protocol (`FULL`; 2-D: the configs' 20k steps; Fashion-MNIST: sized to
the shared 2-core machine, far below any paper's budget). --quick on Fashion-MNIST trains the
configs' 'tiny' variant (8x8 images) in-process and scores with a randomly initialised classifier
(tests/test_experiments_compare_fmnist.py). Results: `<part>.md` (tables, with the command),
`<part>.csv` (one row per run x solver x setting), `<part>_*.png`. `experiments/reproduce_sd3_steps.py`
reads the csv (reproduction 3d); see experiments/results/compare_formulations/README.md for what was
run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from configs.toy2d import common as toy_common
from experiments.demo import table
from experiments.demo_training import REPO, _run_parallel

FORMULATIONS = tuple(toy_common.FORMULATIONS)
FIXED_SAMPLERS = ("euler", "heun", "dpmpp_2m")
ADAPTIVE = "dopri5"
PARTS = ("toy", "fmnist")
TOY_DATASETS = ("gmm", "moons", "8gaussians", "checkerboard")

# The full protocols (script defaults). Training overrides are applied to every formulation alike.
FULL = {
    "toy": dict(datasets=TOY_DATASETS, train_steps=20_000, n=2000, steps=(5, 10, 20, 50),
                tols=(1e-2, 1e-3, 1e-4), nll_n=1000, overrides=()),
    # Sized to the shared 2-core machine (issue 13: "about an hour"): a 2-level nf-16 U-Net, 600 steps
    # of batch 32 at lr 1e-3 (cosine), EMA 0.99; n = 500; Heun's 50 steps (NFE 100) skipped.
    "fmnist": dict(train_steps=600, n=500, steps=(5, 10, 50), tols=(1e-2,), max_nfe=50, overrides=(
        "--config.model.nf=16", "--config.model.ch_mult=(1,2)", "--config.model.num_res_blocks=1",
        "--config.model.attn_resolutions=()", "--config.model.dropout=0.0", "--config.data.batch_size=32",
        "--config.training.lr=1e-3", "--config.training.lr_schedule=cosine",
        "--config.training.warmup_steps=50", "--config.training.ema_decays=(0.99,)")),
}  # fmt: skip
# --quick: tiny everything, for the tests (seconds per run).
QUICK = {
    "toy": dict(datasets=("gmm",), train_steps=300, n=256, steps=(2, 4), tols=(1e-2,), nll_n=64, overrides=(
        "--config.model.width=32", "--config.training.ema_decays=(0.9,)")),
    # the configs' 'tiny' variant (8x8 area-resized images, nf 8), trained in-process (no CLI start-up)
    "fmnist": dict(train_steps=2, n=16, steps=(2,), tols=(), overrides=(
        "--config.data.batch_size=4", "--config.training.ema_decays=(0.5,)",
        "--config.training.fast_compile=True")),
}  # fmt: skip


def config_path(part: str, form: str, dataset: str | None) -> str:
    """The `--config` argument of a run: configs/toy2d/<form>.py:<dataset> or
    configs/fashion_mnist/<form>.py[:<variant>] (`dataset` is the variant on Fashion-MNIST)."""
    if part == "toy":
        return f"{REPO}/configs/toy2d/{form}.py:{dataset}"
    return f"{REPO}/configs/fashion_mnist/{form}.py" + (f":{dataset}" if dataset else "")


def train_cmd(part: str, form: str, dataset: str | None, workdir: str, steps: int, overrides) -> list[str]:
    """The training command of one run (the same budget and overrides for every formulation)."""
    return [
        sys.executable, "-m", "diffusion_jax.train", f"--config={config_path(part, form, dataset)}",
        f"--workdir={workdir}", f"--config.training.num_steps={steps}",
        f"--config.training.ckpt_every={steps}", "--config.training.sample_every=0",
        "--config.training.eval_every=0", f"--config.training.log_every={max(1, min(500, steps))}",
        *overrides, "--noprogress",
    ]  # fmt: skip


class OverBudget(ValueError):
    """A fixed-step setting whose NFE exceeds `--max_nfe` (skipped before sampling)."""


def draw(cfg, den, sampler: str, setting, n: int, grid: str | None = None, max_nfe: int | None = None):
    """Seeds 0..n-1 of `den` through the one engine with the run's sampling settings except the
    sampler (fixed-step: `setting` steps on the run's grid; dopri5: rtol = atol = `setting`).
    Returns (samples [n, ...], NFE: the sampler's rule for fixed steps, measured for dopri5).
    Raises ValueError (before compiling) if the sampler refuses the path or grid, OverBudget if
    a fixed-step NFE exceeds `max_nfe`."""
    from diffusion_jax.training import periodic

    c = copy.deepcopy(cfg)
    c.sampling.sampler = sampler
    c.sampling.chunk_size = min(n, 1000)
    if grid:
        c.sampling.grid = grid
    if sampler == ADAPTIVE:
        c.sampling.sampler_kwargs = {"rtol": float(setting), "atol": float(setting)}
        c.sampling.num_steps = 1
    else:
        c.sampling.sampler_kwargs = {}
        c.sampling.num_steps = int(setting)
    plan = periodic.plan_for(c, den)
    if max_nfe is not None and sampler != ADAPTIVE and int(plan.meta["nfe"]) > max_nfe:
        raise OverBudget(f"skipped: NFE {plan.meta['nfe']} > --max_nfe={max_nfe}")
    chunks = list(plan.stream(list(range(n))))
    samples = np.concatenate([ch.samples for ch in chunks], axis=0)
    nfe = max(int(ch.nfe) for ch in chunks) if sampler == ADAPTIVE else int(plan.meta["nfe"])
    return samples, nfe


def load_run(workdir: str, initial: bool = False):
    """(cfg, denoiser) of a finished run's EMA weights, or of its step-0 initialisation (`initial`)."""
    from diffusion_jax import objectives
    from diffusion_jax.training import build, checkpoints

    state, cfg, net = checkpoints.load_train_state(workdir)
    params = build.build_network(cfg).params if initial else checkpoints.select_params(state, "")
    return cfg, objectives.make_denoiser_from_config(cfg.objective, net.net_fn, params)


def solver_rows(cfg, den, spec: dict, score, n: int, keep=None) -> list[dict]:
    """One row per (solver, steps / tolerance): {'sampler', 'steps', 'tol', 'NFE', 'metric', 'error'}.
    `keep(sampler, setting, samples)` (optional) sees every batch of samples before it is scored."""
    rows = []
    settings = [(s, k) for s in FIXED_SAMPLERS for k in spec["steps"]]
    settings += [(ADAPTIVE, tol) for tol in spec["tols"]]
    if spec.get("settings"):  # an explicit list replaces the steps x samplers product
        settings = list(spec["settings"])
    for sampler, setting in settings:
        row = {"sampler": sampler, "steps": "-", "tol": "-"}
        row["steps" if sampler != ADAPTIVE else "tol"] = setting
        try:
            samples, nfe = draw(cfg, den, sampler, setting, n, max_nfe=spec.get("max_nfe"))
        except ValueError as e:  # refused before compiling (sampler x path x grid), or over budget
            rows.append({**row, "NFE": "-", "metric": float("nan"), "error": str(e).splitlines()[0]})
            continue
        if keep is not None:
            keep(sampler, setting, samples)
        rows.append({**row, "NFE": nfe, "metric": score(samples), "error": ""})
    return rows


# -------------------------------------------------------------------------------------------------
# 2-D
# -------------------------------------------------------------------------------------------------


def toy_floor(dataset: str, cfg, n: int) -> float:
    """W2 between the evaluation reference draw and an independent draw of n data points."""
    import jax

    from diffusion_jax.data import toy2d
    from diffusion_jax.metrics.ot import w2_exact
    from diffusion_jax.training import periodic

    other = jax.random.fold_in(periodic.eval_data_key(cfg), 0xF1004)
    return w2_exact(np.asarray(toy2d.sample_toy(dataset, other, n)), periodic.reference_samples(cfg, n))


def toy_nll(cfg, den, dataset: str, n: int, tols, steps=()) -> list[dict]:
    """Probability-flow ODE NLL (nats / point) of n fresh data points (key independent of the W2
    reference): per fixed-step solver and step count on the run's own grid reversed (NFE = network
    calls), and per Dopri5 tolerance (mean measured NFE); on gmm also the true NLL of the same points.
    Rows {'sampler', 'steps', 'tol', 'NFE', 'NLL', 'true NLL', 'error'}."""
    import jax
    import jax.numpy as jnp

    from diffusion_jax import likelihood, likelihood_fixed
    from diffusion_jax.data import toy2d
    from diffusion_jax.training import periodic

    x = toy2d.sample_toy(dataset, jax.random.fold_in(periodic.eval_data_key(cfg), 0x4E11), n)
    true = float(-jnp.mean(toy2d.toy_gmm().log_prob(x))) if dataset == "gmm" else None
    out = []
    for sampler in FIXED_SAMPLERS:
        for k in steps:
            row = {"sampler": sampler, "steps": k, "tol": "-", "true NLL": true}
            try:
                times = likelihood_fixed.likelihood_grid(
                    den.schedule, k, cfg.sampling.grid, **dict(cfg.sampling.get("grid_kwargs", {}))
                )
            except ValueError as e:  # the grid refuses this schedule / step count
                out.append({**row, "NFE": "-", "NLL": float("nan"), "error": str(e).splitlines()[0]})
                continue
            res = likelihood_fixed.log_likelihood_fixed(den, x, method=sampler, times=times)
            out.append({**row, "NFE": int(res.nfe[0]), "NLL": float(-jnp.mean(res.logp)), "error": ""})
    for tol in tols:
        res = likelihood.log_likelihood(den, x, solver="dopri5", rtol=tol, atol=tol)
        out.append(
            {"sampler": ADAPTIVE, "steps": "-", "tol": tol, "NFE": float(jnp.mean(res.nfe)),
             "NLL": float(-jnp.mean(res.logp)), "true NLL": true, "error": ""}
        )  # fmt: skip
    return out


def evaluate_toy(runs: str, spec: dict, progress: bool = True) -> list[dict]:
    """Rows {'dataset', 'formulation', 'sampler', 'steps', 'tol', 'NFE', 'metric', 'kind', ...}."""
    from diffusion_jax.metrics.ot import w2_exact
    from diffusion_jax.training import periodic

    rows = []
    for dataset in spec["datasets"]:
        for form in spec["formulations"]:
            wd = os.path.join(runs, f"{dataset}_{form}")
            cfg, den = load_run(wd)
            ref = periodic.reference_samples(cfg, spec["n"])
            base = {"dataset": dataset, "formulation": form, "seed": int(cfg.seed)}
            floor = toy_floor(dataset, cfg, spec["n"])
            _, den0 = load_run(wd, initial=True)
            init, _ = draw(cfg, den0, "euler", max(spec["steps"]), spec["n"])
            w2_init = w2_exact(init, ref)
            for r in solver_rows(cfg, den, spec, lambda s, ref=ref: w2_exact(s, ref), spec["n"]):
                rows.append({**base, **r, "kind": "W2", "floor": floor, "init": w2_init})
            for r in toy_nll(cfg, den, dataset, spec["nll_n"], spec["tols"], spec["steps"]):
                rows.append(
                    {**base, "sampler": r["sampler"], "steps": r["steps"], "tol": r["tol"], "NFE": r["NFE"],
                     "metric": r["NLL"], "error": r["error"], "kind": "NLL", "floor": r["true NLL"], "init": None}
                )  # fmt: skip
            if progress:
                print(f"  evaluated {dataset}/{form}", flush=True)
    return rows


# -------------------------------------------------------------------------------------------------
# Fashion-MNIST
# -------------------------------------------------------------------------------------------------


def fmnist_images(split: str, n: int, size: int = 28, resize: str = "none") -> np.ndarray:
    """The first n images of a Fashion-MNIST split, uint8 [n, size, size, 1], brought to the models'
    size as the data pipeline does (`data.transforms.resize_image`, the run's `data.resize`)."""
    from diffusion_jax.data import fashion_mnist, transforms

    x = fashion_mnist.load_split_numpy(split)[0][:n]
    x = x[..., None] if x.ndim == 3 else x
    if x.shape[1] != size:
        x = np.stack([transforms.resize_image(im, size, resize) for im in x])
    return x


def fmnist_scorer(classifier_path: str | None, n: int, size: int = 28, resize: str = "none"):
    """(score, floor): score(samples [n, size, size, 1] in [-1, 1]) -> Frechet distance (Heusel et al.
    2017, eq. 2; `metrics.fid.frechet_distance`) between the classifier's penultimate features of the
    samples and of the first n test images; floor = the same distance for the first n train images,
    i.e. what a perfect generator scores at this n. `classifier_path=None` (--quick only) uses a
    randomly initialised classifier. Images that are not 28 x 28 are resized to 28 by the classifier."""
    import jax

    from diffusion_jax.metrics import classifier, fid

    if classifier_path is None:
        from flax import nnx

        graphdef, state = nnx.split(classifier.create(0))
    else:
        graphdef, state, _ = classifier.load(classifier_path)
    fn = jax.jit(classifier.feature_fn(graphdef, state))

    def moments(images):
        feats = np.concatenate([np.asarray(fn(images[i : i + 500])) for i in range(0, len(images), 500)])
        return feats.astype(np.float64).mean(0), np.cov(feats.astype(np.float64), rowvar=False)

    test = fmnist_images("test", n, size, resize)
    mu_t, s_t = moments(test)
    floor = fid.frechet_distance(*moments(fmnist_images("train", n, size, resize)), mu_t, s_t)

    def score(samples):
        if samples.shape[1:] != test.shape[1:]:
            raise ValueError(f"Fashion-MNIST samples must be [n, {size}, {size}, 1], got {samples.shape}")
        return fid.frechet_distance(*moments(samples.astype(np.float32)), mu_t, s_t)

    return score, floor


def sample_grid(path: str, rows: dict[str, np.ndarray], real: np.ndarray, per_row: int = 12) -> None:
    """A png: one row of `per_row` samples per formulation (seeds 0..per_row-1), then test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_jax.data.transforms import to_uint8

    named = [*rows.items(), ("test images", real)]
    fig, axes = plt.subplots(len(named), 1, figsize=(per_row * 0.6 + 1.6, len(named) * 0.7), squeeze=False)
    for ax, (name, imgs) in zip(axes[:, 0], named, strict=True):
        im = imgs[:per_row]
        im = im if im.dtype == np.uint8 else to_uint8(im)
        ax.imshow(np.concatenate(list(im[..., 0]), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_fmnist(runs: str, spec: dict, classifier_path, out: str, progress=True) -> list[dict]:
    """Rows {'dataset': 'fashion_mnist', 'formulation', 'sampler', ..., 'metric': FD, 'floor'}; also
    writes OUT/fmnist_samples.png and .npz (Euler at the most steps, seeds 0-11, per formulation)."""
    rows, grid, score, floor, real = [], {}, None, None, None
    most = max([k for s, k in spec.get("settings") or () if s == "euler"] or spec["steps"])
    for form in spec["formulations"]:
        cfg, den = load_run(os.path.join(runs, f"fmnist_{form}"))
        if score is None:  # every run has the same data config (checked below)
            # data.image_size 0 = the dataset's own size (the model's image_size)
            size = int(cfg.data.image_size) or int(cfg.model.image_size)
            resize = str(cfg.data.get("resize", "none"))
            score, floor = fmnist_scorer(classifier_path, spec["n"], size, resize)
            real = fmnist_images("test", 12, size, resize)

        def keep(sampler, setting, samples, form=form):
            if sampler == "euler" and setting == most:
                grid[form] = samples[:12]

        for r in solver_rows(cfg, den, spec, score, spec["n"], keep=keep):
            rows.append(
                {
                    "dataset": "fashion_mnist",
                    "formulation": form,
                    "seed": int(cfg.seed),
                    **r,
                    "kind": "FD",
                    "floor": floor,
                }
            )
        if progress:
            print(f"  evaluated fashion_mnist/{form}", flush=True)
    sample_grid(os.path.join(out, "fmnist_samples.png"), grid, real)
    np.savez(os.path.join(out, "fmnist_samples.npz"), **grid, **{REAL_KEY: real})  # for --merge_from
    return rows


REAL_KEY = "__test_images__"


def merge_results(dirs: list[str], part: str, out: str) -> list[dict]:
    """Concatenate the `<part>.csv` of result folders evaluated apart (e.g. `--evaluate_only` on
    disjoint `--formulations` in parallel processes) into OUT/<part>.csv, in FORMULATIONS order; on
    Fashion-MNIST also their sample grids (fmnist_samples.npz -> OUT/fmnist_samples.png / .npz).
    A (dataset, formulation) found in two folders is an error (which one would count?)."""
    rows, grid, real, where = [], {}, None, {}
    for i, d in enumerate(dirs):
        for r in read_csv(os.path.join(d, f"{part}.csv")):  # present: checked in parse_args
            key = (r["dataset"], r["formulation"])
            if where.setdefault(key, i) != i:
                raise SystemExit(f"--merge_from: {key} is in both {dirs[where[key]]!r} and {d!r}")
            rows.append(r)
        npz = os.path.join(d, "fmnist_samples.npz")
        if part == "fmnist" and os.path.isfile(npz):
            with np.load(npz) as z:
                grid.update({k: z[k] for k in z.files if k != REAL_KEY})
                real = z[REAL_KEY] if REAL_KEY in z.files else real
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    rank = {f: i for i, f in enumerate(FORMULATIONS)}
    rows.sort(key=lambda r: (datasets.index(r["dataset"]), rank.get(r["formulation"], len(rank))))
    write_csv(os.path.join(out, f"{part}.csv"), rows)
    if grid:
        grid = dict(sorted(grid.items(), key=lambda kv: rank.get(kv[0], len(rank))))
        if real is None:  # folders written before the test images were saved with the grid
            size = next(iter(grid.values())).shape[1]
            real = fmnist_images("test", 12, size, "none" if size == 28 else "area")
        sample_grid(os.path.join(out, "fmnist_samples.png"), grid, real)
        np.savez(os.path.join(out, "fmnist_samples.npz"), **grid, **{REAL_KEY: real})
    return rows


def train_in_process(cmds: dict[str, list[str]]) -> dict[str, float]:
    """Run `train_cmd` commands in this process (`training.loop.train`, same config parsing as the
    CLI), one after another on one device; --quick Fashion-MNIST uses it to skip the CLI's start-up.
    Returns the wall time per run (s)."""
    import jax

    from diffusion_jax.training import loop, overrides

    times = {}
    for name, cmd in cmds.items():
        cfg = overrides.config_from_argv(cmd[2:3] + [a for a in cmd[3:] if a.startswith("--config")])
        workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
        t0 = time.time()
        loop.train(cfg, workdir, progress=False, devices=jax.devices()[:1])
        times[name] = time.time() - t0
    return times


# -------------------------------------------------------------------------------------------------
# Tables, plots, main
# -------------------------------------------------------------------------------------------------

COLUMNS = (
    "dataset",
    "formulation",
    "seed",
    "kind",
    "sampler",
    "steps",
    "tol",
    "NFE",
    "metric",
    "floor",
    "init",
    "error",
)


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_csv(path: str) -> list[dict]:
    """Rows of a `write_csv` file, numbers parsed (NFE int or float, metric/floor/init float or None)."""

    def num(v):
        if v in ("", "-", "None"):
            return None if v != "-" else "-"
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v else f

    with open(path) as f:
        return [{k: (num(v) if k not in ("dataset", "formulation", "kind", "sampler", "error") else v)
                 for k, v in r.items()} for r in csv.DictReader(f)]  # fmt: skip


def pivot(rows: list[dict], kind: str, dataset: str) -> tuple[list[str], list[dict]]:
    """Markdown-ready rows: one per formulation, one column per solver setting ('euler N=5 (NFE 5)')."""
    sel = [r for r in rows if r["kind"] == kind and r["dataset"] == dataset]
    cols, out = [], {}
    for r in sel:
        setting = f"N={r['steps']}" if r["sampler"] != ADAPTIVE else f"tol={r['tol']:g}"
        nfe = r["NFE"] if isinstance(r["NFE"], str) else f"{r['NFE']:.4g}"
        col = f"{r['sampler']} {setting}"
        val = f"{r['metric']:.4g} (NFE {nfe})"
        if r["error"]:
            val = "skipped" if r["error"].startswith("skipped") else "refused"
        if col not in cols:
            cols.append(col)
        out.setdefault(r["formulation"], {"formulation": r["formulation"]})[col] = val
    body = [{c: row.get(c, "-") for c in ["formulation", *cols]} for row in out.values()]
    return ["formulation", *cols], body


def plot(rows: list[dict], kind: str, dataset: str, path: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = [
        s for s in (*FIXED_SAMPLERS, ADAPTIVE) if any(r["sampler"] == s and r["kind"] == kind for r in rows)
    ]
    # NLL: one y-scale per solver (few-step Euler likelihoods can be far off and would flatten the rest).
    fig, axes = plt.subplots(
        1, len(samplers), figsize=(3.6 * len(samplers), 3.2), sharey=kind != "NLL", squeeze=False
    )
    for ax, s in zip(axes[0], samplers, strict=True):
        for i, form in enumerate(FORMULATIONS):
            pts = sorted(
                (r["NFE"], r["metric"])
                for r in rows
                if r["kind"] == kind and r["dataset"] == dataset and r["formulation"] == form
                and r["sampler"] == s and not r["error"]
            )  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=f"C{i}", label=form)
        floor = next((r["floor"] for r in rows if r["kind"] == kind and r["dataset"] == dataset), None)
        if floor is not None:
            ax.axhline(floor, color="k", ls=":", lw=1, label="floor" if kind != "NLL" else "true NLL")
        ax.set(xscale="log", xlabel="NFE", title=f"{dataset}: {s}")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict], part: str, spec: dict, command: str, out: str, notes: str = "") -> str:
    """The markdown results of `part` (tables per dataset and metric), plus the figures."""
    kinds = {"toy": (("W2", "exact W2 to fresh data"),
                     ("NLL", "NLL (nats/point), probability-flow ODE likelihood, fixed steps and dopri5")),
             "fmnist": (("FD", "classifier feature distance to test images"),)}[part]  # fmt: skip
    lines = [f"# Formulation comparison: {part}", "", f"Made by `{command}`.", "", notes, ""]
    lines.append(f"Protocol: {', '.join(f'{k}={v}' for k, v in spec.items())}.")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for kind, what in kinds:
            cols, body = pivot(rows, kind, dataset)
            if not body:
                continue
            sel = [r for r in rows if r["kind"] == kind and r["dataset"] == dataset]
            extra = ""
            if kind in ("W2", "FD"):
                extra = f" Floor (two independent data draws at n = {spec['n']}): {sel[0]['floor']:.4g}."
                if sel[0].get("init") is not None:
                    inits = ", ".join(
                        f"{r['formulation']} {r['init']:.3g}"
                        for r in sel
                        if r["sampler"] == "euler" and r["steps"] == max(spec["steps"])
                    )  # noqa: E501
                    extra += f" Untrained network (Euler, {max(spec['steps'])} steps): {inits}."
            elif sel[0]["floor"] is not None:
                extra = f" True NLL of the same points: {sel[0]['floor']:.4g}."
            lines.append(table(body, cols, f"{dataset}: {what}") + "\n" + extra)
            png = f"{part}_{dataset}_{kind}.png"
            plot(rows, kind, dataset, os.path.join(out, png), kind)
            lines.append(f"\n![{dataset} {kind}]({png})\n")
    if part == "fmnist" and os.path.isfile(os.path.join(out, "fmnist_samples.png")):
        lines.append(
            "Samples (Euler, the most steps, seeds 0-11) and test images:\n\n![samples](fmnist_samples.png)\n"
        )
    refused = sorted(
        {
            (r["formulation"], r["sampler"], r["error"])
            for r in rows
            if r["error"] and "skipped" not in r["error"]
        }
    )
    if any(r["error"].startswith("skipped") for r in rows):
        lines.append(f"\nSkipped (NFE above --max_nfe={spec.get('max_nfe')}): shown as 'skipped'.")
    if refused:
        lines.append("\nRefused before compiling: " + "; ".join(f"{f}/{s}: {e}" for f, s, e in refused))
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results folder (<part>.md, <part>.csv, figures, runs/)")
    p.add_argument("--part", default="toy", help=f"comma-separated parts; valid: {list(PARTS)}")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps (the tests)")
    p.add_argument("--train_steps", type=int, default=None, help="override the protocol's training steps")
    p.add_argument(
        "--datasets", default=None, help=f"2-D datasets (comma-separated); valid: {list(TOY_DATASETS)}"
    )
    p.add_argument(
        "--formulations", default=None, help=f"subset (comma-separated); valid: {list(FORMULATIONS)}"
    )
    p.add_argument("--n", type=int, default=None, help="samples per evaluation (W2 / feature distance)")
    p.add_argument("--steps", default=None, help="fixed-step counts, comma-separated")
    p.add_argument("--tols", default=None, help="dopri5 tolerances, comma-separated ('' for none)")
    p.add_argument(
        "--settings",
        default=None,
        help="explicit solver settings instead of --steps x samplers and --tols, e.g. "
        "'euler:5,euler:50,heun:5,dopri5:0.01' (samplers: " + ", ".join((*FIXED_SAMPLERS, ADAPTIVE)) + ")",
    )
    p.add_argument(
        "--classifier",
        default=os.path.join(REPO, "checkpoints", "fmnist_classifier.npz"),
        help="Fashion-MNIST classifier checkpoint (`make fmnist_classifier`); --quick uses random weights",
    )
    p.add_argument("--max_nfe", type=int, default=None, help="skip fixed-step settings above this NFE")
    p.add_argument(
        "--runs", default=None, help="training runs folder (default OUT/runs); finished runs are reused"
    )
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    p.add_argument("--report_only", action="store_true", help="rewrite <part>.md from an existing <part>.csv")
    p.add_argument(
        "--merge_from",
        default=None,
        help="with --report_only: comma-separated result folders evaluated apart (disjoint --formulations); "
        "their <part>.csv (and Fashion-MNIST sample grids) are merged into --out first",
    )
    p.add_argument(
        "--evaluate_only",
        action="store_true",
        help="evaluate the finished runs in --runs without training them (e.g. after adding a metric)",
    )
    p.add_argument("--reduced_note", default="", help="a note printed in the results (e.g. a reduced budget)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="train and evaluate with this seed instead of the configs' 0 (config.seed: initialisation, "
        "data stream, reference draws; config.sampling.seed: sampling noise); use a fresh --out / --runs "
        "per seed (a finished run of another seed is refused, not reused)",
    )
    args = p.parse_args(argv)
    parts = [s for s in args.part.split(",") if s]
    bad = [s for s in parts if s not in PARTS]
    if bad or not parts:
        p.error(f"--part: unknown {bad or parts!r}; valid: {list(PARTS)}")
    if args.datasets:
        bad = [d for d in args.datasets.split(",") if d not in TOY_DATASETS]
        if bad:
            p.error(f"--datasets: unknown {bad}; valid: {list(TOY_DATASETS)}")
    if args.formulations:
        bad = [f for f in args.formulations.split(",") if f not in FORMULATIONS]
        if bad:
            p.error(f"--formulations: unknown {bad}; valid: {list(FORMULATIONS)}")
    for name in ("train_steps", "n", "jobs", "max_nfe"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name} must be >= 1, got {v}")
    if args.seed is not None and args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    try:
        steps = [int(s) for s in args.steps.split(",")] if args.steps else None
        tols = [float(s) for s in args.tols.split(",") if s] if args.tols is not None else None
        args.settings = parse_settings(args.settings) if args.settings else None
    except ValueError as e:
        p.error(f"--steps / --tols / --settings: {e}")
    if args.merge_from and not args.report_only:
        p.error("--merge_from needs --report_only (it merges finished evaluations)")
    missing = [
        os.path.join(d, f"{part}.csv") for d in (args.merge_from or "").split(",") if d for part in parts
    ]
    missing = [f for f in missing if not os.path.isfile(f)]
    if missing:
        p.error(f"--merge_from: {missing} not found (evaluate into those folders first)")
    if steps is not None and min(steps) < 1:
        p.error(f"--steps must be >= 1, got {steps}")
    if "fmnist" in parts and not args.quick and not os.path.isfile(args.classifier):
        p.error(f"--classifier={args.classifier!r} not found; train it with `make fmnist_classifier`")
    return args, parts, steps, tols


def parse_settings(text: str) -> tuple:
    """'euler:5,dopri5:0.01' -> (('euler', 5), ('dopri5', 0.01)); ValueError naming the bad item."""
    out = []
    for item in text.split(","):
        name, _, val = item.partition(":")
        if name not in (*FIXED_SAMPLERS, ADAPTIVE) or not val:
            raise ValueError(f"{item!r}: want SAMPLER:VALUE with SAMPLER in {[*FIXED_SAMPLERS, ADAPTIVE]}")
        v = float(val) if name == ADAPTIVE else int(val)
        if v <= 0:
            raise ValueError(f"{item!r}: steps / tolerance must be > 0")
        out.append((name, v))
    return tuple(out)


def protocol(args, part: str, steps, tols) -> dict:
    spec = dict((QUICK if args.quick else FULL)[part])
    given = (("train_steps", args.train_steps), ("n", args.n), ("steps", steps), ("tols", tols),
             ("max_nfe", args.max_nfe), ("settings", args.settings))  # fmt: skip
    for key, val in given:
        if val is not None:
            spec[key] = tuple(val) if isinstance(val, list) else val
    if part == "toy" and args.datasets:
        spec["datasets"] = tuple(args.datasets.split(","))
    spec["formulations"] = tuple(args.formulations.split(",")) if args.formulations else FORMULATIONS
    if args.seed is not None:  # one seed for everything random in a run (the seed-spread runs)
        spec["overrides"] = (
            *spec["overrides"],
            f"--config.seed={args.seed}",
            f"--config.sampling.seed={args.seed}",
        )
    return spec


def run_part(part: str, spec: dict, args, command: str) -> list[dict]:
    runs = args.runs or os.path.join(args.out, "runs")
    os.makedirs(runs, exist_ok=True)
    over = list(spec["overrides"])
    if part == "toy":
        suffix = "_tiny" if args.quick else ""
        cmds = {f"{d}_{f}": train_cmd(part, f, d + suffix, os.path.join(runs, f"{d}_{f}"), spec["train_steps"], over)
                for d in spec["datasets"] for f in spec["formulations"]}  # fmt: skip
    else:
        variant = "tiny" if args.quick else None
        cmds = {f"fmnist_{f}": train_cmd(part, f, variant, os.path.join(runs, f"fmnist_{f}"), spec["train_steps"], over)
                for f in spec["formulations"]}  # fmt: skip
    csv_path = os.path.join(args.out, f"{part}.csv")
    if args.report_only:
        if args.merge_from:
            merge_results([d for d in args.merge_from.split(",") if d], part, args.out)
        if not os.path.isfile(csv_path):
            raise SystemExit(f"--report_only: {csv_path!r} not found (run without --report_only first)")
        return write_report(read_csv(csv_path), part, spec, over, command, args, {})
    if args.evaluate_only:
        missing = [k for k in cmds if not os.path.isdir(os.path.join(runs, k, "checkpoints"))]
        if missing:
            raise SystemExit(f"--evaluate_only: no trained run {missing} under {runs!r} (train them first)")
        times = {}
    else:
        t0 = time.time()
        print(f"[{part}] training {len(cmds)} runs x {spec['train_steps']} steps ...", flush=True)
        if part == "fmnist" and args.quick:
            times = train_in_process(cmds)
        else:
            times = _run_parallel(cmds, runs, jobs=args.jobs)
        print(f"[{part}] trained in {time.time() - t0:.0f} s; evaluating ...", flush=True)
    if part == "toy":
        rows = evaluate_toy(runs, spec, progress=not args.quick)
    else:
        clf = None if args.quick else args.classifier
        rows = evaluate_fmnist(runs, spec, clf, args.out, progress=not args.quick)
    write_csv(csv_path, rows)
    return write_report(rows, part, spec, over, command, args, times)


def write_report(rows, part, spec, over, command, args, times) -> list[dict]:
    note = args.reduced_note
    if times:
        note += "\n\nTraining wall time per run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    shown = {k: v for k, v in spec.items() if k != "overrides"} | {"overrides": " ".join(over)}
    with open(os.path.join(args.out, f"{part}.md"), "w") as f:
        f.write(report(rows, part, shown, command, args.out, note))
    return rows


def main(argv=None) -> dict[str, list[dict]]:
    args, parts, steps, tols = parse_args(argv)
    command = "python -m experiments.compare_formulations " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for part in parts:
        results[part] = run_part(part, protocol(args, part, steps, tols), args, command)
    return results


if __name__ == "__main__":
    main()
