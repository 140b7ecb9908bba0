r"""Sampler benchmark: every sampler x time grid x NFE against a reference ODE solve (issue 3, sec. 9).

For one denoiser (by default the exact denoiser of a 2-D Gaussian mixture under VP-linear with eps
prediction; or a trained checkpoint) and one fixed set of initial noises z ~ N(0, sigma(t_max)^2 I),
every sampler of `diffusion_jax.samplers.registry` is run on every selected grid at each target NFE
(the largest number of steps whose *counted* NFE fits the target; adaptive solvers sweep their
tolerance instead). Two numbers per run:

  err  RMS over samples of ||x - x_ref||_2, where x_ref solves the probability-flow ODE
       dz/dt = alpha'(t) x0_hat + sigma'(t) eps_hat   (Song et al. 2021, eq. 13, in velocity form)
       from the same noise over the same [t_max, t_min] with diffrax at tight tolerances (Dopri8,
       rtol = atol = 1e-10 by default). Deterministic samplers only: a stochastic sampler does not
       approximate the ODE solution, so only its W2 is reported.
  w2   exact W2 (network simplex, POT's `ot.emd2`) between the first n samples and n fresh exact
       draws of the mixture. Its noise floor -- W2 between two independent exact draws of size n --
       and the W2 of the reference ODE samples themselves are reported next to it.

Convergence orders (fixed-step ODE samplers): minus the least-squares slope of log err vs log NFE
over NFE >= order_min_nfe, excluding points within 10x of the reference's own error (the distance
between the reference and a second solve at 100x tighter tolerances); once from the RMS error and
once from the median per-sample error. The two differ on a multimodal target: samples whose
trajectory passes near the boundary between two modes jump to the other mode under a small
integration error, so a fraction of samples proportional to the error carries an O(1) error and the
RMS converges at about half the order of the median (which measures the typical trajectory).

Outputs in `--out`: results.csv, results.md (tables per grid, W2 tables, orders), orders.csv,
error_vs_nfe.png (log-log, one panel per grid, one line per sampler), w2_vs_nfe.png, meta.json.

    python -m experiments.benchmark_samplers \
        --config=configs/experiments/benchmark_samplers.py:full \
        --out=experiments/results/benchmark_samplers

With a pretrained model's config (`--config=configs/pretrained/...`) the same command reports FID
against NFE for the sampler x grid table instead (`experiments/sampler_fid.py`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import functools
import json
import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FAMILIES = ("deterministic", "multistep", "adaptive", "stochastic")
REFERENCE_SOLVERS = ("dopri8", "dopri5", "tsit5")
# The samplers issue 3 asks for (sections 2-3), by registry name: listed in the report if absent.
EXPECTED_SAMPLERS = (
    "euler", "heun", "midpoint", "rk4", "ddim", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3",
    "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc_bh1", "unipc_bh2", "ipndm", "dopri5", "tsit5",
    "euler_maruyama", "ddpm", "ddim_eta", "euler_ancestral", "edm_stochastic", "dpmpp_2m_sde",
    "dpmpp_3m_sde", "pc",
)  # fmt: skip
FLOOR_FACTOR = 10.0  # errors below FLOOR_FACTOR x the reference's own error are not used for orders


# -------------------------------------------------------------------------------------------------
# Pieces owned by other modules, imported lazily so the error names what is missing
# -------------------------------------------------------------------------------------------------


def _registry():
    try:
        from diffusion_jax.samplers import registry
    except ImportError as e:  # pragma: no cover - only before the samplers land
        raise ValueError(f"diffusion_jax.samplers.registry is not available: {e}") from e
    return registry


def w2_exact(x, y) -> float:
    """Exact W2 between the empirical measures x [n, D] and y [m, D] (`diffusion_jax.metrics.ot`)."""
    from diffusion_jax.metrics.ot import w2_exact as _w2

    return _w2(x, y)


def _make_grid():
    from diffusion_jax.samplers.grids import make_grid

    return make_grid


def family_of(sampler) -> str:
    """The sampler family: the name of the module that defines its class (deterministic, ...)."""
    mod = type(sampler).__module__.rsplit(".", 1)[-1]
    if getattr(sampler, "stochastic", False):
        return "stochastic"
    return mod if mod in FAMILIES else "deterministic"


def _csv_names(value) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


# -------------------------------------------------------------------------------------------------
# Setup: denoiser, data, names
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    """Everything a run needs besides the samplers: the denoiser, the exact data sampler (or None),
    the sample shape and a one-line description for the reports."""

    denoiser: Any
    data: Any  # analytic distribution with `.sample(key, n) -> [n, D]`, or None (no W2)
    shape: tuple[int, ...]
    description: str


def build_setup(config) -> Setup:
    """Build the denoiser and the data sampler described by `config.denoiser` / `config.data`.

    Raises ValueError for unknown sources, schedules, kinds, or a checkpoint loader that has not landed.
    """
    from diffusion_jax.predictions import check_kind
    from diffusion_jax.schedules import get_schedule

    dc = config.denoiser
    if dc.source not in ("analytic", "checkpoint"):
        raise ValueError(f"config.denoiser.source={dc.source!r}; valid sources: ['analytic', 'checkpoint']")
    gmm = build_data(config.data) if config.get("data") is not None and config.data.name != "none" else None
    if dc.source == "analytic":
        if gmm is None:
            raise ValueError(
                "config.denoiser.source='analytic' needs a mixture in config.data (means/stds/weights)"
            )
        check_kind(dc.kind, "config.denoiser.kind")
        schedule = get_schedule(dc.schedule, shift=dc.shift, **dict(dc.schedule_kwargs))
        denoiser = gmm.denoiser(schedule, dc.kind)
        shape = (gmm.dim,)
        what = getattr(gmm, "num_components", None)
        desc = (
            f"exact denoiser of the {config.data.name} {f'{what}-component ' if what else ''}"
            f"{gmm.dim}-D distribution, "
            f"schedule {schedule.name} ({dc.schedule}), prediction kind {dc.kind!r}"
        )
    else:
        try:
            from diffusion_jax.training.checkpoints import load_denoiser_from_checkpoint
        except ImportError as e:
            raise ValueError(
                "config.denoiser.source='checkpoint' needs "
                "diffusion_jax.training.checkpoints.load_denoiser_from_checkpoint, which is not "
                f"available in this checkout ({e})"
            ) from e
        if not dc.workdir:
            raise ValueError("config.denoiser.source='checkpoint' needs config.denoiser.workdir")
        loaded = load_denoiser_from_checkpoint(dc.workdir, ema=dc.ema or None, step=dc.step)
        denoiser = loaded[0] if isinstance(loaded, tuple) else loaded  # (denoiser, train config)
        if dc.sample_shape is not None:
            shape = tuple(int(s) for s in dc.sample_shape)
        elif gmm is not None:
            shape = (gmm.dim,)
        else:
            raise ValueError(
                "config.denoiser.sample_shape is required for a checkpoint when config.data.name='none'"
            )
        desc = f"checkpoint {dc.workdir} (schedule {denoiser.schedule.name}, kind {denoiser.kind!r})"
    return Setup(denoiser=denoiser, data=gmm, shape=shape, description=desc)


def build_data(data):
    """The analytic data distribution of `config.data`: name 'custom' is the isotropic mixture
    `GaussianMixture.isotropic(weights [K], means [K, D], stds [K])` from the config; any other name
    goes to `analytic.get_distribution(name, **kwargs)` (gmm_2d_ring, random_gmm, ...); 'none' (no
    exact data, no W2) is handled by the caller."""
    from diffusion_jax import analytic

    if data.name == "custom":
        return analytic.GaussianMixture.isotropic(
            np.asarray(data.weights, np.float64),
            np.asarray(data.means, np.float64),
            np.asarray(data.stds, np.float64),
        )
    if data.name not in analytic.DISTRIBUTIONS:
        raise ValueError(
            f"config.data.name={data.name!r}; valid names: ['custom', 'none'] + {sorted(analytic.DISTRIBUTIONS)}"
        )
    return analytic.get_distribution(data.name, **dict(data.get("kwargs", {}) or {}))


def resolve_names(config) -> tuple[list[str], list[str]]:
    """Validate config.samplers / exclude_samplers / grids against the registry, before any compile.

    Returns (sampler names, grid names). Raises ValueError listing the valid names.
    """
    reg = _registry()
    valid_samplers = list(reg.list_samplers())
    valid_grids = list(reg.list_grids())
    if str(config.samplers).strip() == "all":
        names = list(valid_samplers)
    else:
        names = _csv_names(config.samplers)
    excluded = _csv_names(config.exclude_samplers)
    for field, vals in (("config.samplers", names), ("config.exclude_samplers", excluded)):
        bad = [n for n in vals if n not in valid_samplers]
        if bad:
            raise ValueError(f"{field}: unknown sampler(s) {bad}; valid samplers: {sorted(valid_samplers)}")
    names = [n for n in names if n not in excluded]
    # Report order: by family (deterministic, multistep, adaptive, stochastic), registry order within.
    fam = {n: family_of(_make_sampler(reg, n, config)) for n in names}
    names = sorted(names, key=lambda n: FAMILIES.index(fam[n]) if fam[n] in FAMILIES else len(FAMILIES))
    grids = _csv_names(config.grids)
    bad = [g for g in grids if g not in valid_grids]
    if bad:
        raise ValueError(f"config.grids: unknown grid(s) {bad}; valid grids: {sorted(valid_grids)}")
    if not names or not grids:
        raise ValueError("config.samplers and config.grids must each name at least one entry")
    for n in config.nfes:
        if int(n) < 1:
            raise ValueError(f"config.nfes must be positive integers, got {tuple(config.nfes)}")
    if config.reference.solver not in REFERENCE_SOLVERS:
        raise ValueError(
            f"config.reference.solver={config.reference.solver!r}; valid solvers: {list(REFERENCE_SOLVERS)}"
        )
    if config.w2_num_samples > config.num_samples:
        raise ValueError(
            f"config.w2_num_samples ({config.w2_num_samples}) must be <= config.num_samples ({config.num_samples})"
        )
    return names, grids


# -------------------------------------------------------------------------------------------------
# Reference solve
# -------------------------------------------------------------------------------------------------


def reference_solve(
    denoiser,
    z: jax.Array,
    t_start: float,
    t_end: float,
    *,
    solver: str = "dopri8",
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_steps: int = 100_000,
) -> tuple[jax.Array, int]:
    """High-accuracy solve of the probability-flow ODE from z at t_start down to t_end.

    dz/dt = alpha'(t) x0_hat(z, t) + sigma'(t) eps_hat(z, t) (Song et al. 2021, eq. 13: the PF-ODE
    of a Gaussian path, here through `Denoiser.velocity`), with an adaptive embedded Runge-Kutta
    pair from diffrax (Dopri8: Prince & Dormand 1981; Dopri5: Dormand & Prince 1980; Tsit5:
    Tsitouras 2011) and a PID step-size controller.

    Args:
      denoiser: any `Denoiser`.
      z: [B, ...] state at t_start.
      t_start, t_end: times with t_start > t_end (integration runs backwards in t).
    Returns: (z at t_end [B, ...], number of accepted + rejected steps as an int).
    """
    if solver not in REFERENCE_SOLVERS:
        raise ValueError(f"unknown reference solver {solver!r}; valid solvers: {list(REFERENCE_SOLVERS)}")
    dt = z.dtype
    x, steps = _reference_fn(solver, int(max_steps))(
        denoiser,
        z,
        jnp.asarray(t_start, dt),
        jnp.asarray(t_end, dt),
        jnp.asarray(rtol, dt),
        jnp.asarray(atol, dt),
    )
    return x, int(steps)


@functools.cache
def _reference_fn(solver: str, max_steps: int):
    """One jitted diffrax solve per (solver, max_steps); times and tolerances are traced, so the
    100x-tighter check solve and repeated calls reuse the same executable."""
    import diffrax

    solver_cls = {"dopri8": diffrax.Dopri8, "dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5}[solver]

    @jax.jit
    def solve(den, z0, t0, t1, rtol, atol):
        term = diffrax.ODETerm(lambda t, y, args: args.velocity(y, t))
        sol = diffrax.diffeqsolve(
            term,
            solver_cls(),
            t0=t0,
            t1=t1,
            dt0=None,
            y0=z0,
            args=den,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps,
        )
        return sol.ys[0], sol.stats["num_steps"]

    return solve


# -------------------------------------------------------------------------------------------------
# Running the samplers
# -------------------------------------------------------------------------------------------------


def static_nfe(sampler, num_steps: int, final_zero: bool = False):
    """`sampler.nfe(num_steps, final_zero)`, or `sampler.nfe(num_steps)` for samplers whose
    accounting takes no `final_zero`; None when not known in advance (adaptive)."""
    try:
        return sampler.nfe(num_steps, final_zero=final_zero)
    except TypeError:
        return sampler.nfe(num_steps)


def steps_for_nfe(sampler, schedule, target: int, final_zero: bool = False) -> int:
    """The largest number of steps whose NFE by the sampler's own accounting (`sampler.nfe`) is
    <= target and which the sampler accepts (`sampler.validate`).

    Raises ValueError if there is none: the sampler's own message when it rejects every step count
    (e.g. a schedule it cannot handle), else one naming the target and nfe(1).
    """
    best, why = None, None
    for n in range(1, target + 1):
        if static_nfe(sampler, n, final_zero) > target:
            break
        try:
            sampler.validate(schedule, n)
        except ValueError as e:
            why = e
            continue
        best = n
    if best is None:
        if why is not None:
            raise why
        raise ValueError(
            f"no number of steps has NFE <= {target} (nfe(1) = {static_nfe(sampler, 1, final_zero)})"
        )
    return best


def _rms_err(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    d = np.sqrt(np.sum((x - ref).reshape(len(x), -1) ** 2, axis=1))
    return float(np.sqrt(np.mean(d**2))), float(np.median(d))


def _make_sampler(reg, name: str, config, extra: dict | None = None):
    kw = dict(config.sampler_kwargs.get(name, {})) if config.sampler_kwargs else {}
    kw.update(extra or {})
    return reg.get_sampler(name, **kw)


def _run_one(sampler, denoiser, z, grid, keys):
    """(samples [B, ...], nfe) of one sampler run; stochastic samplers get their per-sample keys."""
    out = sampler.run(denoiser, z, grid, keys if sampler.stochastic else None)
    return out.samples, out.nfe


def _is_adaptive(sampler) -> bool:
    return family_of(sampler) == "adaptive"


def run_benchmark(config, out_dir: str | None = None, *, progress: bool = True) -> dict:
    """Run the benchmark described by `config`; write the reports to `out_dir` if given.

    Returns a dict with `rows` (one dict per (sampler, grid, target NFE) or adaptive tolerance, the
    CSV rows), `orders` (one dict per (sampler, grid)), `meta` (setup, reference, W2 floor, timing),
    `skipped` (names and reasons of combinations that could not run), and the arrays behind them:
    `z0` [n, *shape] initial noise, `references` {(t_start, t_end): x_ref [n, *shape]}, `denoiser`.
    """
    ctx = jax.enable_x64(True) if config.x64 else contextlib.nullcontext()
    with ctx:
        result = _run(config, progress)
    if out_dir:
        write_outputs(result, out_dir)
    return result


def _run(config, progress: bool) -> dict:
    from tqdm import tqdm

    from diffusion_jax.samplers import seeds as seeds_lib

    t_wall = time.time()
    names, grid_names = resolve_names(config)  # fail on bad names before building anything
    reg = _registry()
    make_grid = _make_grid()
    setup = build_setup(config)
    den = setup.denoiser
    schedule = den.schedule
    dtype = jnp.float64 if config.x64 else jnp.float32
    t_min = schedule.t_min if config.t_min is None else config.t_min
    t_max = schedule.t_max if config.t_max is None else config.t_max

    samplers = {n: _make_sampler(reg, n, config) for n in names}
    n_samples = int(config.num_samples)
    n_w2 = int(config.w2_num_samples) if setup.data is not None else 0

    # Fixed seeds through the sampling engine's key derivation (samplers/seeds.py): sample i's key is
    # fold_in(key(seed), i); its initial noise comes from the engine's `initial_state` and its
    # sampler noise from the same key, for every sampler, so all runs start from the same z and
    # differ only by the solver. One jit for all of it.
    @functools.partial(jax.jit, static_argnums=(0,))
    def initial_state(n, seed):
        keys = seeds_lib.sample_keys(jnp.arange(n), seed)
        return seeds_lib.initial_state(keys, None, setup.shape, schedule, t_max, dtype), keys

    z0, sampler_keys = initial_state(n_samples, int(config.seed))
    pool = ThreadPoolExecutor(max_workers=1)  # W2 on the host overlaps with the next compile
    w2_data = w2_floor = w2_floor_range = None
    futures: dict[str, Future] = {}
    if n_w2:
        # Draw 0 is the fixed data set every W2 is measured against. The floor: W2 from further exact
        # draws of the same size (3, for the spread) to it; a sampler with no error scores about that.
        draws = jax.jit(
            lambda dist, key: jax.vmap(lambda j: dist.sample(jax.random.fold_in(key, j), n_w2))(jnp.arange(4))
        )(setup.data, jax.random.fold_in(jax.random.key(int(config.seed)), 10**9))
        draws = np.asarray(draws, np.float64)
        w2_data = draws[0]
        for j in range(1, 4):
            futures[f"floor{j}"] = pool.submit(w2_exact, draws[j], w2_data)

    # Reference ODE solutions, one per distinct (t_start, t_end) of the grids used.
    refs: dict[tuple[float, float], dict] = {}

    def reference_for(t0: float, t1: float) -> np.ndarray:
        k = (round(t0, 12), round(t1, 12))
        if k not in refs:
            rc = config.reference
            tic = time.time()
            x, steps = reference_solve(
                den, z0, t0, t1, solver=rc.solver, rtol=rc.rtol, atol=rc.atol, max_steps=rc.max_steps
            )
            secs = time.time() - tic
            x_chk, steps_chk = reference_solve(
                den,
                z0,
                t0,
                t1,
                solver=rc.solver,
                rtol=rc.rtol / 100,
                atol=rc.atol / 100,
                max_steps=rc.max_steps,
            )
            x = np.asarray(x, np.float64)
            self_err, _ = _rms_err(x, np.asarray(x_chk, np.float64))
            refs[k] = {
                "x": x,
                "t_start": t0,
                "t_end": t1,
                "steps": steps,
                "check_steps": steps_chk,
                "self_err": self_err,
                "seconds": secs,
            }
            if n_w2:
                futures[f"ref{k}"] = pool.submit(w2_exact, x[:n_w2], w2_data)
        return refs[k]["x"]

    # The work list: (sampler, grid, target NFE or tolerance).
    jobs = []
    skipped = []
    for name in names:
        s = samplers[name]
        if _is_adaptive(s):
            # The grid only supplies the endpoints to an adaptive solver: run it once, on the first grid.
            for tol in config.adaptive_tols:
                jobs.append((name, grid_names[0], None, float(tol)))
            continue
        for g in grid_names:
            for target in config.nfes:
                jobs.append((name, g, int(target), None))

    rows = []
    jitted = {}
    bar = tqdm(jobs, desc="benchmark", disable=not progress, dynamic_ncols=True)
    for name, g, target, tol in bar:
        bar.set_postfix_str(f"{name} {g} {target if tol is None else f'tol={tol:g}'}")
        s = samplers[name]
        fam = family_of(s)
        row = {
            "sampler": name,
            "family": fam,
            "grid": g if tol is None else "adaptive",
            "target_nfe": target if target is not None else "",
            "tol": tol if tol is not None else "",
            "num_steps": "",
            "nfe": "",
            "err_rms": float("nan"),
            "err_median": float("nan"),
            "w2": float("nan"),
            "seconds": float("nan"),
            "status": "ok",
            "note": "",
        }
        try:
            if tol is not None:
                s = _make_sampler(reg, name, config, {"rtol": tol, "atol": tol})
                num_steps = int(config.adaptive_grid_steps)
                key = (name, tol)
            else:
                num_steps = steps_for_nfe(s, schedule, target, config.final_zero)
                key = (name, None)
            grid_np = np.asarray(
                make_grid(g, num_steps, schedule, t_min=t_min, t_max=t_max, final_zero=config.final_zero),
                np.float64,
            )
            s.validate(schedule, num_steps)
        except (ValueError, NotImplementedError) as e:
            row["status"] = f"skipped: {e}"
            skipped.append((name, row["grid"], target if tol is None else tol, str(e)))
            rows.append(row)
            continue
        row["num_steps"] = num_steps
        if key not in jitted:
            # One jit per sampler (the grid is a traced argument): XLA compiles once per grid length.
            jitted[key] = jax.jit(functools.partial(_run_one, s))
        tic = time.time()
        try:
            x, nfe = jitted[key](den, z0, jnp.asarray(grid_np, dtype), sampler_keys)
            x = np.asarray(jax.block_until_ready(x), np.float64)
        except Exception as e:  # noqa: BLE001 - one broken sampler must not sink the whole benchmark
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            row["status"] = f"failed: {type(e).__name__}: {first_line}"
            skipped.append((name, row["grid"], target if tol is None else tol, row["status"]))
            rows.append(row)
            continue
        row["seconds"] = time.time() - tic
        row["nfe"] = int(nfe)
        expected = static_nfe(s, num_steps, config.final_zero) if tol is None else None
        if expected is not None and expected != row["nfe"]:
            # The static accounting chose the step count; a different counted NFE is a sampler bug.
            row["note"] = f"counted NFE {row['nfe']} != {name}.nfe({num_steps}) = {expected}"
        if not np.all(np.isfinite(x)):
            row["status"] = "non-finite samples"
        elif fam != "stochastic":
            ref = reference_for(float(grid_np[0]), float(grid_np[-1]))
            row["err_rms"], row["err_median"] = _rms_err(x, ref)
        if n_w2 and np.all(np.isfinite(x)):
            futures[f"row{len(rows)}"] = pool.submit(w2_exact, x[:n_w2], w2_data)
        rows.append(row)

    for i, row in enumerate(rows):
        f = futures.get(f"row{i}")
        if f is not None:
            row["w2"] = f.result()
    if n_w2:
        floors = [futures[f"floor{j}"].result() for j in range(1, 4)]
        w2_floor = float(np.mean(floors))
        w2_floor_range = (float(np.min(floors)), float(np.max(floors)))
    for k, r in refs.items():
        r["w2"] = futures[f"ref{k}"].result() if n_w2 else float("nan")
    pool.shutdown()

    ref_self_err = max((r["self_err"] for r in refs.values()), default=float("nan"))
    orders = convergence_orders(rows, int(config.order_min_nfe), ref_self_err)
    missing = [n for n in EXPECTED_SAMPLERS if n not in set(reg.list_samplers())]
    meta = {
        "description": setup.description,
        "variant": config.get("variant", ""),
        "samplers": names,
        "grids": grid_names,
        "nfes": [int(n) for n in config.nfes],
        "adaptive_tols": [float(t) for t in config.adaptive_tols],
        "num_samples": n_samples,
        "w2_num_samples": n_w2,
        "t_min": float(t_min),
        "t_max": float(t_max),
        "final_zero": bool(config.final_zero),
        "dtype": "float64" if config.x64 else "float32",
        "seed": int(config.seed),
        "reference": {
            "solver": config.reference.solver,
            "rtol": config.reference.rtol,
            "atol": config.reference.atol,
            "solves": [{k: v for k, v in r.items() if k != "x"} for r in refs.values()],
            "self_err": ref_self_err,
        },
        "w2_floor": w2_floor,
        "w2_floor_range": w2_floor_range,
        "order_min_nfe": int(config.order_min_nfe),
        "missing_samplers": missing,
        "wall_seconds": time.time() - t_wall,
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "jax": jax.__version__,
        "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
    }
    return {
        "rows": rows,
        "orders": orders,
        "meta": meta,
        "skipped": skipped,
        # The arrays behind the numbers, for checks against independent solves (not written to disk).
        "z0": np.asarray(z0),
        "references": {k: r["x"] for k, r in refs.items()},
        "denoiser": den,
    }


# -------------------------------------------------------------------------------------------------
# Analysis
# -------------------------------------------------------------------------------------------------


def convergence_orders(rows: list[dict], min_nfe: int, floor: float) -> list[dict]:
    """Measured global orders: for each deterministic (sampler, grid), minus the least-squares slope
    of log error vs log NFE over the rows with NFE >= min_nfe whose error is above FLOOR_FACTOR x
    `floor` (the reference's own error), once for the RMS error (`order_rms`) and once for the median
    per-sample error (`order_median`, the robust one: see the module docstring). At least 2 distinct
    NFEs are needed; else NaN."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        # Stochastic: no ODE error. Adaptive: a tolerance sweep, not a fixed-step sequence of order p.
        if r["family"] in ("stochastic", "adaptive") or r["status"] != "ok" or r["nfe"] == "":
            continue
        groups.setdefault((r["sampler"], r["grid"]), []).append(r)
    out = []
    for (name, grid), rs in groups.items():
        entry = {"sampler": name, "family": rs[0]["family"], "grid": grid}
        for key, col in (("err_rms", "rms"), ("err_median", "median")):
            # dict(): repeated NFEs (e.g. RK4 at targets 5 and 6 both use 1 step) add nothing to the fit.
            pts = sorted(
                dict(
                    (r["nfe"], r[key])
                    for r in rs
                    if r["nfe"] >= min_nfe and np.isfinite(r[key]) and r[key] > FLOOR_FACTOR * floor
                ).items()
            )
            order = float("nan")
            if len(pts) >= 2:
                lx = np.log([p[0] for p in pts])
                ly = np.log([p[1] for p in pts])
                order = float(-np.polyfit(lx, ly, 1)[0])
            entry[f"order_{col}"] = order
            entry[f"nfe_range_{col}"] = f"{pts[0][0]}-{pts[-1][0]}" if pts else ""
        out.append(entry)
    return out


# -------------------------------------------------------------------------------------------------
# Reports
# -------------------------------------------------------------------------------------------------

CSV_FIELDS = (
    "sampler",
    "family",
    "grid",
    "target_nfe",
    "tol",
    "num_steps",
    "nfe",
    "err_rms",
    "err_median",
    "w2",
    "seconds",
    "status",
    "note",
)


ORDER_FIELDS = ("sampler", "family", "grid", "order_rms", "nfe_range_rms", "order_median", "nfe_range_median")


def _fmt(v, digits=2) -> str:
    if v is None or v == "" or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}e}"
    return str(v)


def write_outputs(result: dict, out_dir: str) -> None:
    """Write results.csv, orders.csv, results.md, meta.json, error_vs_nfe.png and w2_vs_nfe.png."""
    os.makedirs(out_dir, exist_ok=True)
    rows, orders, meta = result["rows"], result["orders"], result["meta"]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6e}" if isinstance(v, float) and k != "tol" else v) for k, v in r.items()})
    with open(os.path.join(out_dir, "orders.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ORDER_FIELDS)
        w.writeheader()
        for o in orders:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in o.items()})
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, default=str)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_report(result))
    plot_results(result, out_dir)


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def markdown_report(result: dict) -> str:
    """The Markdown report: error and W2 per grid (sampler x target NFE, cell 'value (NFE)'), the
    adaptive sweeps, the measured orders, and the skipped combinations."""
    rows, orders, meta = result["rows"], result["orders"], result["meta"]
    nfes = meta["nfes"]
    ref = meta["reference"]
    blocks = ["# Sampler benchmark"]
    head = [
        f"- Denoiser: {meta['description']}.",
        f"- {meta['num_samples']} samples from fixed seeds (seed {meta['seed']}), the same initial noise "
        f"for every sampler; t from {meta['t_max']:g} to {meta['t_min']:g}; {meta['dtype']}.",
        f"- err = RMS over samples of ||x - x_ref||_2 (and the median of ||x - x_ref||_2), x_ref from "
        f"diffrax {ref['solver']} at rtol = atol = {ref['rtol']:g} "
        f"({', '.join(str(s['steps']) for s in ref['solves'])} steps); reference self-error (vs a 100x "
        f"tighter solve) {_fmt(ref['self_err'])}.",
    ]
    if meta["w2_num_samples"]:
        ref_w2 = ", ".join(_fmt(s.get("w2")) for s in ref["solves"])
        lo, hi = meta["w2_floor_range"]
        head.append(
            f"- W2 on {meta['w2_num_samples']} samples vs a fixed set of as many exact draws (exact OT, "
            f"POT). Noise floor (further exact draws vs that set): {_fmt(meta['w2_floor'])} (range "
            f"{_fmt(lo)}-{_fmt(hi)}); W2 of the reference ODE samples: {ref_w2}."
        )
    head.append(
        "- NFE = the sampler's counted network evaluations; each cell is 'value (NFE)'; the column is "
        "the target NFE (the most steps whose NFE fits)."
    )
    blocks.append("\n".join(head))

    def cell(r, key):
        if r is None:
            return "-"
        if r["status"] != "ok":
            return "skip" if r["status"].startswith("skipped") else "fail"
        return f"{_fmt(r[key])} ({r['nfe']})"

    for key, title in (
        ("err_rms", "RMS error to the reference ODE solution"),
        ("err_median", "Median per-sample error to the reference ODE solution"),
        ("w2", "W2 to the data"),
    ):
        if key == "w2" and not meta["w2_num_samples"]:
            continue
        blocks.append(f"## {title}")
        for g in meta["grids"]:
            body = []
            for name in meta["samplers"]:
                rs = {r["target_nfe"]: r for r in rows if r["sampler"] == name and r["grid"] == g}
                if not rs:
                    continue
                fam = next(iter(rs.values()))["family"]
                if key != "w2" and fam == "stochastic":
                    continue
                body.append([name, fam] + [cell(rs.get(n), key) for n in nfes])
            if body:
                blocks.append(f"### grid `{g}`")
                blocks.append(_table(["sampler", "family"] + [f"NFE {n}" for n in nfes], body))
    adaptive = [r for r in rows if r["grid"] == "adaptive"]
    if adaptive:
        blocks.append("## Adaptive solvers (tolerance sweep, rtol = atol)")
        body = [
            [
                r["sampler"],
                f"{r['tol']:g}",
                str(r["nfe"]),
                _fmt(r["err_rms"]),
                _fmt(r["err_median"]),
                _fmt(r["w2"]),
                r["status"],
            ]
            for r in adaptive
        ]
        blocks.append(_table(["sampler", "tol", "NFE", "err (RMS)", "err (median)", "W2", "status"], body))
    blocks.append("## Measured convergence orders")
    blocks.append(
        f"Minus the slope of log error vs log NFE over NFE >= {meta['order_min_nfe']} (points within "
        f"{FLOOR_FACTOR:g}x the reference self-error excluded), from the RMS error and from the median "
        "per-sample error, as 'rms / median'."
    )
    grids_o = meta["grids"]
    by = {(o["sampler"], o["grid"]): o for o in orders}

    def ocell(o):
        if o is None:
            return "-"
        v = [o["order_rms"], o["order_median"]]
        return " / ".join("-" if not np.isfinite(x) else f"{x:.2f}" for x in v)

    body = []
    for name in meta["samplers"]:
        cells = [by.get((name, g)) for g in grids_o]
        if any(c is not None for c in cells):
            body.append([name] + [ocell(c) for c in cells])
    blocks.append(_table(["sampler"] + [f"`{g}`" for g in grids_o], body))
    if result["skipped"]:
        blocks.append("## Skipped or failed combinations")
        lines = []
        for name, g, t, why in result["skipped"]:
            line = f"- {name} / {g} / {t}: {why}"
            if line not in lines:
                lines.append(line)
        blocks.append("\n".join(lines))
    notes = [r for r in rows if r.get("note")]
    if notes:
        blocks.append("## NFE accounting mismatches (counted vs `sampler.nfe(num_steps)`)")
        blocks.append(
            "\n".join(
                f"- {r['sampler']} / {r['grid']} / target {r['target_nfe']}: {r['note']}" for r in notes
            )
        )
    if meta.get("missing_samplers"):
        blocks.append(f"Samplers of issue 3 not in the registry: {meta['missing_samplers']}")
    else:
        blocks.append("Every sampler of issue 3 is in the registry.")
    blocks.append(f"Wall time {meta['wall_seconds']:.0f} s on {meta['machine']}, {meta['date_utc']}.")
    return "\n\n".join(b.strip("\n") for b in blocks) + "\n"


def plot_results(result: dict, out_dir: str) -> None:
    """error_vs_nfe.png: log-log error vs NFE, one column per grid, one line per deterministic
    sampler (adaptive sweeps dashed, the same line in every column), top row RMS error, bottom row
    median per-sample error. w2_vs_nfe.png: W2 vs NFE with every sampler, plus the W2 noise floor
    and the W2 of the reference ODE samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, meta = result["rows"], result["meta"]
    grids = meta["grids"]
    names = meta["samplers"]
    fams = {r["sampler"]: r["family"] for r in rows}
    cmap = plt.get_cmap("tab20")
    # tab20 comes in (dark, light) pairs: the 10 dark shades first, then the light ones.
    colors = {n: cmap((2 * i) % 20 + (i // 10) % 2) for i, n in enumerate(names)}
    styles = {"deterministic": "-", "multistep": "-.", "adaptive": "--", "stochastic": ":"}
    markers = {"deterministic": "o", "multistep": "s", "adaptive": "^", "stochastic": "x"}

    def series(name, grid, key):
        rs = [r for r in rows if r["sampler"] == name and r["grid"] == grid and r["status"] == "ok"]
        pts = sorted((r["nfe"], r[key]) for r in rs if np.isfinite(r[key]) and r[key] > 0)
        return [p[0] for p in pts], [p[1] for p in pts]

    figures = [
        (
            "error_vs_nfe.png",
            [("err_rms", "RMS error to reference ODE"), ("err_median", "median error to reference ODE")],
        ),
    ]
    if meta["w2_num_samples"]:
        figures.append(("w2_vs_nfe.png", [("w2", "W2 to data")]))
    ncol = len(grids)

    def fig_height(n_rows):
        # Tall enough for the legend: one line per sampler plus the reference lines.
        return max(4.2 * n_rows, 0.2 * (len(names) + 4))

    ok = [r for r in rows if r["status"] == "ok" and r["nfe"] != ""]
    nfe_vals = [r["nfe"] for r in ok] or [1, 100]
    xlim = (min(nfe_vals) / 1.25, max(nfe_vals) * 1.25)
    ylims = {}
    for key in ("err_rms", "err_median", "w2"):
        ys = [r[key] for r in ok if np.isfinite(r[key]) and r[key] > 0]
        if key != "w2":
            se = meta["reference"]["self_err"]
            ys += [se] if np.isfinite(se) and se > 0 and ys and se > min(ys) / 100 else []
        ylims[key] = (min(ys) / 2, max(ys) * 2) if ys else (1e-3, 1.0)
    for fname, panels in figures:
        fig, axes = plt.subplots(
            len(panels),
            ncol,
            figsize=(4.6 * ncol + 2.6, fig_height(len(panels))),
            squeeze=False,
            sharey="row",
        )
        handles = {}
        for row_i, (key, ylabel) in enumerate(panels):
            for ax, g in zip(axes[row_i], grids, strict=True):
                for name in names:
                    fam = fams.get(name, "deterministic")
                    if key != "w2" and fam == "stochastic":
                        continue
                    xs, ys = series(name, "adaptive" if fam == "adaptive" else g, key)
                    if xs:
                        (h,) = ax.loglog(
                            xs, ys, styles[fam], marker=markers[fam], ms=3, lw=1.2, color=colors[name]
                        )
                        handles[name] = h
                # Reference lines must not stretch the axes (the self-error sits near 1e-11).
                refs = []
                if key == "w2":
                    if meta["w2_floor"] is not None:
                        refs.append((meta["w2_floor"], "W2 floor (two exact draws)", "k", "--"))
                    for sol in meta["reference"]["solves"]:
                        if sol.get("w2") is not None and np.isfinite(sol["w2"]):
                            refs.append((sol["w2"], "W2 of reference ODE samples", "gray", ":"))
                else:
                    refs.append((meta["reference"]["self_err"], "reference self-error", "k", ":"))
                lo, hi = ylims[key]
                for y, label, color, ls in refs:
                    if np.isfinite(y) and lo <= y <= hi:
                        handles[label] = ax.axhline(y, color=color, lw=1.0, ls=ls)
                ax.set_ylim(lo, hi)
                ax.set_xlim(*xlim)
                ax.set_title(f"grid: {g}", fontsize=9)
                ax.set_xlabel("NFE")
                ax.grid(True, which="both", alpha=0.3)
            axes[row_i][0].set_ylabel(ylabel)
        fig.legend(
            list(handles.values()), list(handles.keys()), loc="center right", fontsize=7, frameon=False
        )
        fig.suptitle(meta["description"], fontsize=9)
        # Fixed margins in inches (tight_layout measures every log-axis tick label: seconds per figure).
        width, height = 4.6 * ncol + 2.6, fig_height(len(panels))
        fig.subplots_adjust(
            left=0.85 / width,
            right=1 - 2.5 / width,
            bottom=0.6 / height,
            top=1 - 0.8 / height,
            wspace=0.08,
            hspace=0.45,
        )
        fig.savefig(os.path.join(out_dir, fname), dpi=110)
        plt.close(fig)


# -------------------------------------------------------------------------------------------------
# CLI
# -------------------------------------------------------------------------------------------------


def main(argv):
    del argv
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # keep the tqdm bar readable (orbax / jax INFO lines)

    cfg = flags.FLAGS.config
    out = flags.FLAGS.out
    result = run_benchmark(cfg, out)
    m = result["meta"]
    print(f"wrote {out}: {len(result['rows'])} runs in {m['wall_seconds']:.0f} s")
    for o in result["orders"]:
        print(
            f"  order {o['sampler']:>20s} / {o['grid']:<10s} rms {o['order_rms']:.2f}  median {o['order_median']:.2f}"
        )


def is_pretrained_request(argv) -> bool:
    """Whether argv's --config is a pretrained model's (`configs/pretrained/*`, denoiser.source =
    'pretrained'): its FID-vs-NFE table is `experiments.sampler_fid`."""
    from diffusion_jax.training import overrides

    spec, _ = overrides.pop_config_args(argv)
    if spec is None or spec.endswith(".json"):
        return False
    cfg = overrides.load_config_arg(spec)
    return "denoiser" in cfg and cfg.denoiser.get("source", "") == "pretrained"


if __name__ == "__main__":
    import sys

    if is_pretrained_request(sys.argv):
        from experiments import sampler_fid

        sys.exit(sampler_fid.main(sys.argv))
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "configs/experiments/benchmark_samplers.py", "benchmark config")
    flags.DEFINE_string("out", "experiments/results/benchmark_samplers", "output directory")
    app.run(main)
