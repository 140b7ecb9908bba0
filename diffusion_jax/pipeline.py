"""A trained run in one line of Python: `Pipeline.from_workdir(dir)(seeds="0-7")`.

    pipe = Pipeline.from_workdir("runs/ot")                       # newest checkpoint, run's weights
    x = pipe(seeds="0-63")                                         # the run's own sampling settings
    x = pipe(seeds=[3], sampler="heun", grid="uniform", steps=20, grid_kwargs={"t_min": 1e-3})
    x = pipe(seeds="0-99", condition="0-9", guidance=2.0)         # class-conditional run
    x = pipe(seeds="0-3", condition="a photo of a shoe")           # text run: a caption

Every call draws through the one engine with the same resolution of settings as
`python -m diffusion_jax.sample` (`training.sampling`: the run's `sampling` section, overridden by
the arguments given), so seed s is bitwise the sample the CLI, `evaluate` and the periodic samples
give for the same checkpoint and settings.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Pipeline:
    """A run's denoiser (one checkpoint, one set of weights) and its saved sampling settings."""

    denoiser: object
    run_config: object
    shape: tuple[int, ...]
    step: int
    weights: str

    @classmethod
    def from_workdir(cls, workdir: str, *, step: int | None = None, ema: str | None = None) -> Pipeline:
        """Load the run in `workdir` read-only: checkpoint `step` (None = newest readable) and weights
        `ema` (None = the run's `sampling.ema`; '' = first EMA copy; 'params'; or an EMA name)."""
        from diffusion_jax.training import sampling

        den, run_cfg, shape, s, weights = sampling.load_run(workdir, step=step, ema=ema)
        if ema is not None:
            run_cfg.sampling.ema = ema
        return cls(den, run_cfg, shape, s, weights)

    def plan(
        self, *, sampler=None, grid=None, steps=None, condition=None, guidance=None, sampler_kwargs=None,
        grid_kwargs=None, base_seed=None, chunk_size=None, dtype=None,
    ):  # fmt: skip
        """The validated `training.sampling.Plan` for these settings (None = the run's)."""
        from diffusion_jax.training import sampling

        labels = caption = None
        if condition is not None:
            if isinstance(condition, str) and not _is_labels(condition):
                caption = condition  # not a labels spec: a caption (refused by a model without text)
            elif isinstance(condition, str):
                labels = condition
            else:
                labels = ",".join(str(int(y)) for y in np.atleast_1d(condition))
        spec = sampling.spec_from_run(self.run_config).override(
            sampler=sampler, sampler_kwargs=sampler_kwargs, grid=grid, num_steps=steps, grid_kwargs=grid_kwargs,
            guidance_scale=None if guidance is None else float(guidance), base_seed=base_seed,
            chunk_size=chunk_size, dtype=dtype, labels=labels, caption=caption,
        )  # fmt: skip
        return sampling.make_plan(
            self.run_config, self.denoiser, self.shape, spec, step=self.step, weights=self.weights
        )

    def __call__(self, seeds="0-63", *, devices=None, **settings) -> np.ndarray:
        """Samples [n, *shape] (host numpy) of `seeds` ("0-63,100", an int or a list), one per seed
        in order; `settings` as in `plan` (sampler, grid, steps, condition, guidance, ...)."""
        return self.plan(**settings).sample(seeds, devices=devices)


def _is_labels(s: str) -> bool:
    from diffusion_jax.samplers import seeds as sd

    try:
        sd.parse_labels(s)
    except ValueError:
        return False
    return True


__all__ = ["Pipeline"]
