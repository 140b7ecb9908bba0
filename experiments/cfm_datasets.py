"""The 2-D datasets of the conditional flow matching paper's runner, as finite numpy data sets.

Tong et al. (TMLR 2024, "Improving and generalizing flow-based generative models with minibatch
optimal transport", Sec. 5.1 / Table 2) train on a *fixed* data set of 10,000 points per
distribution and score on a held-out test set of 1,000 (their runner draws N = 12,000 points,
then splits 10,000 / 1,000 / 1,000). The definitions below transcribe the constants of the runner's
datamodules (atong01/conditional-flow-matching, `runner/configs/datamodule/*.yaml` and
`runner/src/datamodules/`); where they differ from this project's i.i.d. `data.toy2d` samplers we
follow the runner and name the difference:

``grid_moons`` (the runner's N -> moons, ``moons.yaml``: scikit-learn ``make_moons(noise=0.05)``,
then ``x * 2`` and ``x[:, 0] -= 1``)
    NOT i.i.d. on the arcs: ``n // 2`` points at *evenly spaced* angles ``linspace(0, pi)`` on the
    upper arc ``(cos a, sin a)`` and ``n - n // 2`` on the lower arc ``(1 - cos a, 1/2 - sin a)``,
    shuffled, plus i.i.d. ``N(0, 0.05^2 I)``; then scaled by 2 and shifted by -1 in x.
    (``data.toy2d.moons`` is torchcfm's ``sample_moons``: arcs drawn uniformly, a U[0, 0.2) offset,
    ``3 x - 1``: another data set.)

``ring8_std1`` (the runner's N -> 8gaussians, ``gaussians.yaml``: torchdyn
``generate_gaussians(n // 8, n_gaussians=8, radius=5, std_gaussians=1, noise=1e-4)``)
    exactly ``n // 8`` points per mode (not a multinomial split), means ``5 (cos a_k, sin a_k)``,
    ``a_k = 2 pi k / 8``, std 1 per coordinate, plus one ``N(0, 1e-8 I)`` offset per mode.
    (``data.toy2d.8gaussians`` has std ``0.1 ** 0.25 = 0.56``.)

``dsb_moons`` / ``dsb_8gaussians`` (the runner's moons -> 8gaussians, ``twodim.yaml`` with
system ``moon-8gaussians``: `two_dim.data_distrib`, taken from De Bortoli et al. 2021's DSB code)
    ``dsb_moons``: ``make_moons(noise=0.1)`` (the evenly spaced arc grid above with noise 0.1),
    standardised by the *scalar* mean and (unbiased) std over all coordinates, times 7.
    ``dsb_8gaussians``: a mode drawn uniformly from the 8 unit directions (axes and diagonals),
    ``x = 3 (4 u + N(0, 0.5^2 I))``: radius 12, std 1.5.

``gaussian``: ``N(0, I_2)``, drawn fresh at every step (the runner's ``torch.randn_like``), so it
has no fixed training set.

Splits: the runner splits with ``torch.utils.data.random_split(generator=manual_seed(42))``; we
use a numpy permutation seeded 42 (same sizes, not the same rows). Each run seed re-draws the data
set (the runner seeds its generator with the run seed), so seed spread includes data-set spread.
"""

from __future__ import annotations

import math

import numpy as np

SPLIT = (10_000, 1_000, 1_000)
SPLIT_SEED = 42


def _moons_grid(n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """scikit-learn's make_moons: evenly spaced angles on two arcs, shuffled, + N(0, noise^2)."""
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0.0, math.pi, n_out)
    a_in = np.linspace(0.0, math.pi, n_in)
    x = np.concatenate(
        [
            np.stack([np.cos(a_out), np.sin(a_out)], 1),
            np.stack([1.0 - np.cos(a_in), 1.0 - np.sin(a_in) - 0.5], 1),
        ]
    )
    x = x[rng.permutation(n)]
    return x + noise * rng.standard_normal(x.shape)


def grid_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """The runner's N -> moons target [n, 2] (module docstring)."""
    x = 2.0 * _moons_grid(n, 0.05, rng)
    x[:, 0] -= 1.0
    return x


def ring8_std1(n: int, rng: np.random.Generator) -> np.ndarray:
    """The runner's N -> 8gaussians target [8 * (n // 8), 2] (torchdyn generate_gaussians)."""
    per = n // 8
    out = []
    for k in range(1, 9):
        a = 2.0 * math.pi * k / 8
        mean = 5.0 * np.array([math.cos(a), math.sin(a)])
        out.append(mean + rng.standard_normal((per, 2)) + 1e-4 * rng.standard_normal(2))
    return np.concatenate(out)


def dsb_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """The runner's moons -> 8gaussians source [n, 2]."""
    x = _moons_grid(n, 0.1, rng)
    return (x - x.mean()) / x.std(ddof=1) * 7.0


def dsb_8gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """The runner's moons -> 8gaussians target [n, 2]."""
    r = 1.0 / math.sqrt(2.0)
    centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)])
    idx = rng.integers(0, 8, n)
    return 3.0 * (centers[idx] + 0.5 * rng.standard_normal((n, 2)))


DATASETS = {
    "grid_moons": grid_moons,
    "ring8_std1": ring8_std1,
    "dsb_moons": dsb_moons,
    "dsb_8gaussians": dsb_8gaussians,
}

# task -> (source dataset or "gaussian", target dataset), the paper's Table 2 columns.
TASKS = {
    "gaussian_to_8gaussians": ("gaussian", "ring8_std1"),
    "gaussian_to_moons": ("gaussian", "grid_moons"),
    "moons_to_8gaussians": ("dsb_moons", "dsb_8gaussians"),
}


def draw(name: str, n: int, seed: int) -> np.ndarray:
    """n points [n, 2] float32 of dataset `name` (a DATASETS key or 'gaussian') from numpy seed."""
    rng = np.random.default_rng(seed)
    if name == "gaussian":
        return rng.standard_normal((n, 2)).astype(np.float32)
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} unknown; valid: {['gaussian', *DATASETS]}")
    x = DATASETS[name](n, rng)
    if len(x) < n:  # ring8_std1 draws 8 * (n // 8)
        x = np.concatenate([x, DATASETS[name](8 * math.ceil((n - len(x)) / 8), rng)])[:n]
        x = x[rng.permutation(len(x))]
    return x[:n].astype(np.float32)


def split(x: np.ndarray, sizes=SPLIT, seed: int = SPLIT_SEED) -> tuple[np.ndarray, ...]:
    """(train, val, test) rows of x [sum(sizes), 2] by a permutation seeded `seed`."""
    if len(x) != sum(sizes):
        raise ValueError(f"split needs {sum(sizes)} rows, got {len(x)}")
    p = np.random.default_rng(seed).permutation(len(x))
    a, b = sizes[0], sizes[0] + sizes[1]
    return x[p[:a]], x[p[a:b]], x[p[b:]]


def task_data(task: str, seed: int, sizes=SPLIT) -> dict:
    """The fixed data of one run: {'train_tgt', 'test_tgt'} and, for a data source, {'train_src',
    'test_src'}; each distribution drawn (N = sum(sizes)) from the run seed, then split."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} unknown; valid: {sorted(TASKS)}")
    src, tgt = TASKS[task]
    out = {}
    for role, name, off in (("tgt", tgt, 0), ("src", src, 1)):
        if name == "gaussian":
            continue
        tr, _, te = split(draw(name, sum(sizes), 1000 * seed + off), sizes)
        out[f"train_{role}"], out[f"test_{role}"] = tr, te
    return out


def definitions_markdown() -> str:
    """One line per dataset definition, for the results file."""
    return "\n".join(
        [
            "- `gaussian`: N(0, I_2), fresh every step and for every evaluation.",
            "- `ring8_std1` (runner `gaussians.yaml`, torchdyn generate_gaussians): n/8 points per mode, "
            "means 5 (cos 2pi k/8, sin 2pi k/8), std 1.",
            "- `grid_moons` (runner `moons.yaml`, sklearn make_moons noise 0.05): evenly spaced arc grid "
            "(not i.i.d.), + N(0, 0.05^2), x 2, x -= 1.",
            "- `dsb_moons` (runner `twodim.yaml`, DSB data_distrib 'moon'): make_moons noise 0.1, "
            "standardised by the scalar mean/std, x 7.",
            "- `dsb_8gaussians` (runner `twodim.yaml`, DSB '8gaussians'): 3 (4 u_k + N(0, 0.25 I)), "
            "u_k the 8 axis/diagonal unit vectors (radius 12, std 1.5).",
        ]
    )
