"""How a run is sampled: its saved `sampling` settings, per-seed conditions, one `Plan` for everyone.

The sampling CLI, `evaluate`, periodic samples during training and `pipeline.Pipeline` all build a
`Plan` here and draw through the one engine (`samplers.seeds.stream`), so seed s of a checkpoint is
the same sample whichever of them drew it (tests/test_sampling_engine.py).

A run's `sampling` section (configs/base.py) is how it is sampled by default: `sampler` +
`sampler_kwargs`, `grid` + `grid_kwargs`, `num_steps`, `guidance_scale`, `seed` (the base seed),
`chunk_size`, `ema` (weights), `labels` / `caption` (conditions). `SamplingSpec` is that section as a
value; `spec_from_run` reads it (older runs without the newer fields get their defaults).

Conditions are functions of the seed, never of a position in a batch:
  * class-conditional models: `label(seed) = L[seed mod len(L)]` for the labels spec L
    (`sampling.labels`, e.g. "0-9" or "3"); the default L is every class, i.e. `seed mod K`;
  * text models: a caption (`sampling.caption`, the same for every seed) or, by default, the
    class-template caption / per-class embedding of `label(seed)` as above (K = the dataset's classes);
  * unconditional models: none (a labels spec, a caption or guidance != 1 is refused).
Classifier-free guidance (Ho & Salimans 2022) wraps the denoiser against the null condition
(`conditioning.null_condition`) when `guidance_scale != 1`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Everything that defines a run's samples besides the seeds and the weights' values."""

    sampler: str = "euler"
    sampler_kwargs: dict = dataclasses.field(default_factory=dict)
    grid: str = "uniform"
    num_steps: int = 50
    grid_kwargs: dict = dataclasses.field(default_factory=dict)
    guidance_scale: float = 1.0
    base_seed: int = 0
    chunk_size: int = 16
    ema: str = ""  # "" = the first EMA copy, "params" = raw parameters, or an EMA name
    dtype: str = "float32"
    labels: str = ""  # labels spec mapped over the seeds ("" = seed mod K)
    caption: str = ""  # one caption for every seed (text models)

    def override(self, **kw) -> SamplingSpec:
        """A copy with the non-None entries of `kw` replaced. A new sampler (grid) name drops the
        run's kwargs of the old one unless new kwargs are given with it; given kwargs are merged
        over the kept ones (a dotted `--config.grid.kwargs.t_min=...` adds one option)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        unknown = sorted(set(kw) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"sampling: unknown field(s) {unknown}; valid: {[f.name for f in dataclasses.fields(self)]}"
            )
        for name in ("sampler", "grid"):
            base = (
                {}
                if kw.get(name, getattr(self, name)) != getattr(self, name)
                else getattr(self, f"{name}_kwargs")
            )
            kw[f"{name}_kwargs"] = {**base, **dict(kw.get(f"{name}_kwargs") or {})}
        return dataclasses.replace(self, **kw)


def _plain(x) -> dict:
    return dict(x.to_dict()) if hasattr(x, "to_dict") else dict(x or {})


def spec_from_run(run_cfg) -> SamplingSpec:
    """The run's `sampling` section (plus `eval.ema` of older runs) as a `SamplingSpec`."""
    s = run_cfg.sampling
    ema = s.get("ema", None)
    if ema is None:
        ema = run_cfg.get("eval", {}).get("ema", "") if "eval" in run_cfg else ""
    d = SamplingSpec()
    return SamplingSpec(
        sampler=str(s.get("sampler", d.sampler)),
        sampler_kwargs=_plain(s.get("sampler_kwargs", {})),
        grid=str(s.get("grid", d.grid)),
        num_steps=int(s.get("num_steps", d.num_steps)),
        grid_kwargs=_plain(s.get("grid_kwargs", {})),
        guidance_scale=float(s.get("guidance_scale", d.guidance_scale)),
        base_seed=int(s.get("seed", d.base_seed)),
        chunk_size=int(s.get("chunk_size", d.chunk_size)),
        ema=str(ema or ""),
        dtype=str(s.get("dtype", d.dtype)),
        labels=str(s.get("labels", "") or ""),
        caption=str(s.get("caption", "") or ""),
    )


@dataclasses.dataclass
class Plan:
    """A validated sampling job without its seeds: `plan.stream(seeds)` / `plan.sample(seeds)`.

    denoiser: the (possibly guided) denoiser; sampler, grid [N+1] numpy, shape (per sample), dtype;
    cond_fn: seeds [m] -> conditioning pytree [m, ...] or None; condition_of: seed -> {"label": y}
    / {"caption": c} / {} (what each .npz stores); meta: the settings every .npz stores; decode:
    None, or latents -> images for latent models (pretrained DiT + VAE), applied by the writers.
    """

    denoiser: object
    sampler: object
    grid: np.ndarray
    shape: tuple[int, ...]
    dtype: str
    base_seed: int
    chunk_size: int
    cond_fn: Callable | None
    condition_of: Callable[[int], dict]
    meta: dict
    source: object = None
    decode: Callable | None = None  # latent models: samples [m, *shape] -> images [m, H, W, C]

    def stream(self, seeds, *, devices=None, process_index=0, process_count=1) -> Iterator:
        """`samplers.seeds.stream` with this plan's settings: yields `Chunk`s of this process's block."""
        from diffusion_jax.samplers import seeds as sd

        return sd.stream(
            self.denoiser, self.sampler, self.grid, seeds, self.shape, base_seed=self.base_seed,
            devices=devices, chunk_size=self.chunk_size, cond=self.cond_fn, dtype=self.dtype,
            source=self.source, process_index=process_index, process_count=process_count,
        )  # fmt: skip

    def sample(self, seeds, *, devices=None) -> np.ndarray:
        """All samples [n, *shape] (host numpy), seeds in the given order."""
        chunks = list(self.stream(seeds, devices=devices))
        return np.concatenate([c.samples for c in chunks], axis=0)


def _check_number(value, field):
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")


def build_sampler_and_grid(spec: SamplingSpec, schedule, prefix: str = "sampling"):
    """(sampler, grid [N+1] numpy) from a spec, errors naming `prefix.sampler` / `prefix.grid`."""
    from diffusion_jax.samplers import registry

    try:
        sampler = registry.get_sampler(spec.sampler, **dict(spec.sampler_kwargs))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{prefix}.sampler: {e}") from e
    if isinstance(spec.num_steps, bool) or not isinstance(spec.num_steps, int) or spec.num_steps < 1:
        raise ValueError(f"{prefix}.num_steps must be an integer >= 1, got {spec.num_steps!r}")
    try:
        grid = registry.make_grid(spec.grid, spec.num_steps, schedule, **dict(spec.grid_kwargs))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{prefix}.grid: {e}") from e
    return sampler, np.asarray(grid, np.float64)


def _labels_spec(spec: str, k: int, what: str) -> np.ndarray:
    from diffusion_jax.samplers import seeds as sd

    if not spec:
        return np.arange(k, dtype=np.int32)
    try:
        lab = sd.parse_labels(spec)
    except ValueError as e:
        raise ValueError(f"sampling.labels: {e}") from e
    bad = [y for y in lab if not 0 <= y < k]
    if bad:
        raise ValueError(f"sampling.labels {bad[:5]} outside [0, {k}) ({what})")
    return np.asarray(lab, np.int32)


def conditioning(run_cfg, spec: SamplingSpec, label_of: Callable | None = None):
    """(cond_fn, condition_of, null_label) of a run's model under `spec` (module doc), validated.

    label_of: optional override `seeds [m] -> labels [m]` (periodic samples of given classes).
    Raises ValueError for a labels spec / caption the model cannot take, or labels outside [0, K).
    """
    d, m = run_cfg.data, run_cfg.model
    k = int(m.get("num_classes", 0) or 0)
    te = m.get("text_encoder", None)
    captions, emb = d.get("captions", "") or "", d.get("embeddings_path", "") or ""
    text = bool(captions or emb)
    if spec.caption and te is None:
        raise ValueError("sampling.caption: the model of this run has no text encoder (model.text_encoder)")
    k_text = 0
    if text:
        from diffusion_jax.data.pipeline import TFDS_DATASETS

        k_text = TFDS_DATASETS[d.name].num_classes if d.name in TFDS_DATASETS else 0
    if spec.labels and not (k or (text and not spec.caption and k_text)):
        raise ValueError(
            "sampling.labels: the model of this run is not class-conditional (model.num_classes = 0)"
        )
    if not (k or text):
        return None, (lambda s: {}), None
    kk = k or k_text
    table = _labels_spec(spec.labels, kk, "model.num_classes" if k else f"classes of {d.name}")
    labels_of = label_of or (lambda s: table[np.asarray(s, np.int64) % len(table)])
    null = int(run_cfg.objective.get("null_label", -1))
    null = k if null < 0 else null
    text_fn = None
    if spec.caption:
        from diffusion_jax.data.text import tokenize_bytes

        max_len = int(te.get("max_len", 64))

        def text_fn(y):
            tok, mask = tokenize_bytes([spec.caption] * len(y), max_len)
            return {"tokens": tok, "tokens_mask": mask}
    elif captions == "class_template":
        from diffusion_jax.data import captions as cap

        def text_fn(y):
            return {k_: np.asarray(v) for k_, v in cap.caption_tokens(run_cfg, y).items()}
    elif emb:
        from diffusion_jax.data import captions as cap

        transform = cap.make_text_transform(run_cfg)

        def text_fn(y):
            out = transform({"label": y}, 0)
            return {"context": np.asarray(out["context"]), "context_mask": np.asarray(out["context_mask"])}

    def cond_fn(seeds_chunk):
        y = np.asarray(labels_of(np.asarray(seeds_chunk)), np.int32)
        out = {"label": y} if k else {}
        return {**out, **(text_fn(y) if text_fn is not None else {})}

    def condition_of(seed):
        out = {} if spec.caption and not k else {"label": int(np.asarray(labels_of(np.asarray([seed])))[0])}
        return {**out, **({"caption": spec.caption} if spec.caption else {})}

    return cond_fn, condition_of, (null if k else None)


def make_plan(
    run_cfg,
    denoiser,
    shape: Sequence[int],
    spec: SamplingSpec,
    *,
    step: int | None = None,
    weights: str = "",
    label_of: Callable | None = None,
) -> Plan:
    """Validate `spec` against the run and its model and build the `Plan` (nothing is compiled).

    denoiser: the run's unguided denoiser with its parameters set (training's or a checkpoint's).
    step / weights: recorded in every sample's metadata (checkpoint step, "params" / EMA name).
    """
    import jax.numpy as jnp

    from diffusion_jax.conditioning import null_condition
    from diffusion_jax.samplers import guidance
    from diffusion_jax.samplers import seeds as sd

    if spec.dtype not in DTYPES:
        raise ValueError(f"sampling.dtype={spec.dtype!r} unknown; valid: {list(DTYPES)}")
    _check_number(spec.guidance_scale, "sampling.guidance_scale")
    sampler, grid = build_sampler_and_grid(spec, denoiser.schedule)
    denoiser = _select_head(run_cfg, denoiser, sampler, spec.sampler)
    cond_fn, condition_of, null = conditioning(run_cfg, spec, label_of)
    scale = float(spec.guidance_scale)
    if scale != 1.0:
        if cond_fn is None:
            raise ValueError(
                f"sampling.guidance_scale={scale}: classifier-free guidance needs a conditional model; "
                "this run's model is unconditional (use 1.0)"
            )
        plain = cond_fn

        def cond_fn(seeds_chunk):
            c = plain(seeds_chunk)
            return guidance.guidance_cond(c, {k: np.asarray(v) for k, v in null_condition(c, null).items()})

        first = cond_fn(np.zeros(1, np.uint32))
        denoiser = guidance.cfg_denoiser(denoiser, first["cond"], first["uncond"], scale)
    if spec.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    sd.validate_sampling(denoiser, sampler, grid)
    if isinstance(spec.chunk_size, bool) or not isinstance(spec.chunk_size, int) or spec.chunk_size < 1:
        raise ValueError(f"sampling.chunk_size must be an integer >= 1, got {spec.chunk_size!r}")
    source = _source(run_cfg)  # the run's t = 1 distribution (None: the Gaussian default)
    _check_source_grid(source, grid)
    # "final_zero" in the NFE rule = the last step is the sampler's special step onto sigma = 0 (none
    # for Heun / RK4 on a velocity model: `deterministic._ODERK.euler_onto_zero`).
    euler_onto_zero = getattr(sampler, "euler_onto_zero", None)
    final_zero = bool(grid[-1] == 0.0) and (euler_onto_zero is None or euler_onto_zero(denoiser))
    meta = {
        "sampler": spec.sampler,
        "sampler_kwargs": json.dumps(dict(spec.sampler_kwargs), sort_keys=True),
        "grid": spec.grid,
        "grid_kwargs": json.dumps(dict(spec.grid_kwargs), sort_keys=True),
        "num_steps": int(grid.shape[0] - 1),
        "nfe": _static_nfe(sampler, grid, final_zero),
        "guidance_scale": scale,
        "base_seed": int(spec.base_seed),
        "chunk_size": int(spec.chunk_size),
        "dtype": spec.dtype,
        "checkpoint_step": -1 if step is None else int(step),
        "weights": weights,
        "source": "gaussian" if source is None else source.name,
    }
    del jnp
    return Plan(
        denoiser, sampler, grid, tuple(int(s) for s in shape), spec.dtype, int(spec.base_seed),
        int(spec.chunk_size), cond_fn, condition_of, meta, source,
    )  # fmt: skip


def check_score_head(run_cfg, sampler, name: str, prefix: str = "sampling") -> None:
    """ValueError (one line, before loading weights or compiling) if `sampler` needs a score head
    (`needs_score_head`: the interpolant SDE) and the run was trained without `objective.score_head`."""
    obj = run_cfg.get("objective", None) or {}
    if getattr(sampler, "needs_score_head", False) and not bool(obj.get("score_head", False)):
        raise ValueError(
            f"{prefix}.sampler={name!r} needs a score head, but this run was trained without one "
            "(objective.score_head=False); use an ODE sampler (e.g. euler) or train with score_head=True"
        )


def _select_head(run_cfg, denoiser, sampler, name: str):
    """The denoiser `sampler` runs on: the two-head [velocity, score] one (`objectives.both_heads`)
    for a sampler with `needs_score_head`, refused for a run without a score head
    (`check_score_head`); the given (velocity) denoiser otherwise."""
    check_score_head(run_cfg, sampler, name)
    if not getattr(sampler, "needs_score_head", False):
        return denoiser
    from diffusion_jax import objectives

    return objectives.both_heads(denoiser)


def _static_nfe(sampler, grid, final_zero: bool) -> int:
    """The sampler's NFE known before the run, or -1 for adaptive solvers (the sampling CLI and
    `evaluate` report the NFE the solves used)."""
    n = sampler.nfe(int(grid.shape[0] - 1), final_zero)
    return -1 if n is None else int(n)


def _source(run_cfg):
    """The run's source (`data.pair_with`, `data.sources.source_from_config`) for the engine's
    initial state, or None for the standard normal (the engine's default draw, the same bits)."""
    if not (run_cfg.get("data", None) and run_cfg.data.get("pair_with", "")):
        return None
    from diffusion_jax.data.sources import source_from_config

    src = source_from_config(run_cfg.data)
    return None if getattr(src, "gaussian", False) else src


def _check_source_grid(source, grid) -> None:
    """A non-Gaussian source is the distribution at t = 1: the grid must start there (ValueError
    before compiling)."""
    if source is not None and float(grid[0]) != 1.0:
        raise ValueError(
            f"sampling.grid: the run's source {source.name!r} (data.pair_with) is the distribution at t = 1; "
            f"the grid must start at t = 1 (it starts at {float(grid[0])}: set grid_kwargs.t_max=1.0)"
        )


def weights_name(state, which: str) -> str:
    """The name of the weights `checkpoints.select_params(state, which)` picks ("params" or an EMA)."""
    if which in (None, ""):
        return next(iter(state.ema)) if state.ema else "params"
    return which


def local_params(params):
    """Parameters readable by this process: global arrays that span other processes' devices are
    gathered (replicated ones: this process's copy), so the engine can place them on a local device."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if x.is_fully_replicated:
            return x.addressable_data(0)
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(x, tiled=True)

    return jax.tree.map(one, params)


def load_run(workdir: str, *, step: int | None = None, ema: str | None = None):
    """The trained model of a run, read-only: (denoiser, run_cfg, sample_shape, step, weights).

    ema: None = the run's `sampling.ema`; "" = the first EMA copy; "params"; or an EMA name.
    """
    from diffusion_jax import objectives
    from diffusion_jax.training import checkpoints
    from diffusion_jax.training.build import data_shape

    state, run_cfg, net = checkpoints.load_train_state(workdir, step)
    which = spec_from_run(run_cfg).ema if ema is None else ema
    params = checkpoints.select_params(state, which)
    denoiser = objectives.make_denoiser_from_config(run_cfg.objective, net.net_fn, params)
    s = int(jax.device_get(state.step))
    return denoiser, run_cfg, tuple(int(x) for x in data_shape(run_cfg)), s, weights_name(state, which)


__all__ = [
    "DTYPES",
    "Plan",
    "SamplingSpec",
    "build_sampler_and_grid",
    "check_score_head",
    "conditioning",
    "load_run",
    "local_params",
    "make_plan",
    "spec_from_run",
    "weights_name",
]
