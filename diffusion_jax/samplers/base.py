"""The sampler interface: an initial state plus a step function over (t_cur, t_next) pairs.

A sampler is a frozen dataclass of its hyperparameters (hashable, so it is a static argument under
`jax.jit`). `run` drives it with one `jax.lax.scan` over a descending time grid, so compile time
does not grow with the number of steps and nothing returns to the host between steps. Adaptive
solvers override `run` (diffrax, in-graph).

The contract a sampler implements (everything else is the base class's):

    init_aux(ev, z, grid) -> aux                 sampler-specific carry (default: () = no history)
    update(ev, carry, t_cur, t_next, i, keys, num_steps) -> (z_next, aux_next)
    nfe(num_steps, final_zero) -> int            static NFE accounting, equal to the counted NFE
    validate(schedule, num_steps)                option checks (ValueError), before compiling

`ev` is an `Evaluator`: the denoiser as a step sees it. Every prediction requested through it
(`ev.x0`, `ev.eps`, `ev.velocity`, `ev.score`, `ev.x0_eps`) is one network evaluation and is counted;
branches and loops that contain evaluations go through `ev.cond` / `ev.switch` / `ev.fori_loop`,
which count only the branch taken. The base class adds the count to `Carry.nfe`, so no step
touches NFE by hand. The carry is a typed pytree `Carry(z [B, ...], nfe int32 [], aux)`.

Multistep methods keep their history in `aux`, using the public helpers below: `History`
(fixed-size buffers, most recent first), `history_init`, `history_push`, `multistep_order`
(warm-up / `lower_order_final` order of step i) and `validate_multistep`.

Capability flags are properties of the instance: `needs_alpha` (the update divides by alpha(t) at a
step start, e.g. logSNR / sigma~ coordinates; Euler's depends on its `coords`), `stochastic`
(needs per-sample keys). `check_grid(denoiser, grid)` refuses a concrete grid before compiling.

Randomness: `run` receives one key per sample ([B] typed key array) and hands the step the per-step
keys ``fold_in(sample_key, step_index)``, so sample i never depends on batch size or device count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffusion_jax.predictions import Denoiser
from diffusion_jax.schedules import Schedule

Array = jax.Array


@struct.dataclass
class Carry:
    """The scan carry of every sampler: z [B, ...] (state at the current grid time), nfe (int32
    scalar, network evaluations so far, counted by the base class) and aux (the sampler's own pytree,
    e.g. a `History`; () when it keeps none). `carry["z"]` reads a field like a mapping."""

    z: Array
    nfe: Array
    aux: Any = ()

    def __getitem__(self, key: str):
        if key not in ("z", "nfe", "aux"):
            raise KeyError(f"Carry has fields 'z', 'nfe', 'aux'; got {key!r}")
        return getattr(self, key)

    @classmethod
    def of(cls, carry) -> Carry:
        """A `Carry` from a Carry or a mapping with 'z', 'nfe' (and optionally 'aux')."""
        if isinstance(carry, Carry):
            return carry
        return cls(z=carry["z"], nfe=jnp.asarray(carry["nfe"], jnp.int32), aux=carry.get("aux", ()))


class Evaluator:
    """The denoiser seen by one step: every prediction is one counted network evaluation.

    `count` is the number of evaluations traced so far (a Python int, or an int32 tracer after a
    `cond` / `switch` whose branches differ). Attributes of the denoiser (`schedule`, `kind`, ...) are
    read through.
    """

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser
        self.count: Any = 0

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    def _counted(self, fn, *args):
        self.count = self.count + 1
        return fn(*args)

    def x0(self, z: Array, t) -> Array:
        """x0-hat [B, ...] at (z [B, ...], t () or [B]); one evaluation."""
        return self._counted(self.denoiser.x0, z, t)

    def eps(self, z: Array, t) -> Array:
        return self._counted(self.denoiser.eps, z, t)

    def velocity(self, z: Array, t) -> Array:
        return self._counted(self.denoiser.velocity, z, t)

    def score(self, z: Array, t) -> Array:
        return self._counted(self.denoiser.score, z, t)

    def raw(self, z: Array, t) -> Array:
        """The network's own output (kind `denoiser.kind`, all heads); one evaluation."""
        return self._counted(self.denoiser.raw, z, t)

    def x0_eps(self, z: Array, t) -> tuple[Array, Array]:
        """(x0-hat, eps-hat) from one evaluation."""
        return self._counted(self.denoiser.x0_eps, z, t)

    def _isolated(self, fn: Callable, as_array: bool = True) -> Callable:
        def run(*ops):
            outer, self.count = self.count, 0
            try:
                out = fn(*ops)
                n = self.count
            finally:
                self.count = outer
            return out, (jnp.asarray(n, jnp.int32) if as_array else n)

        return run

    def cond(self, pred, true_fn: Callable, false_fn: Callable, *operands):
        """`jax.lax.cond` counting the evaluations of the branch taken (pred unbatched)."""
        out, n = jax.lax.cond(pred, self._isolated(true_fn), self._isolated(false_fn), *operands)
        self.count = self.count + n
        return out

    def switch(self, index, branches: Sequence[Callable], *operands):
        """`jax.lax.switch` counting the evaluations of the branch taken."""
        out, n = jax.lax.switch(index, [self._isolated(b) for b in branches], *operands)
        self.count = self.count + n
        return out

    def fori_loop(self, lower: int, upper: int, body: Callable, init):
        """`jax.lax.fori_loop` over static bounds; counts (upper - lower) x the body's evaluations
        (the body must make a fixed number of them)."""
        per = {"n": 0}

        def wrapped(j, x):
            out, n = self._isolated(body, as_array=False)(j, x)
            if not isinstance(n, int):
                raise ValueError("Evaluator.fori_loop: the loop body must make a fixed number of evaluations")
            per["n"] = n
            return out

        out = jax.lax.fori_loop(lower, upper, wrapped, init)
        self.count = self.count + max(upper - lower, 0) * per["n"]
        return out


# -------------------------------------------------------------------------------------------------
# History helpers for multistep methods (public: samplers outside the package use them too)
# -------------------------------------------------------------------------------------------------

LOWER_ORDER_FINAL = ("auto", "always", "never")


class History(NamedTuple):
    """Fixed-size history, most recent first: values [K, B, ...] (e.g. past x0-hat / eps-hat) and
    times [K] (the coordinate each was taken at: lambda, t, sigma~, ...). Entries not yet filled are 0."""

    values: Array
    times: Array


def history_init(size: int, z: Array, time_dtype=None) -> History:
    """An empty `History` of `size` entries shaped like z [B, ...]."""
    return History(jnp.zeros((size,) + z.shape, z.dtype), jnp.zeros((size,), time_dtype or z.dtype))


def history_push(hist: History, value: Array, time) -> History:
    """Insert (value, time) at position 0, dropping the oldest entry."""
    return History(_push(hist.values, value), _push(hist.times, jnp.asarray(time)))


def _push(buf: Array, x: Array) -> Array:
    return jnp.concatenate([x[None].astype(buf.dtype), buf[:-1]], axis=0)


def lower_order_final_active(mode: str, num_steps: int) -> bool:
    """Whether `lower_order_final` lowers the last steps' order: "always", or "auto" with N < 15 (the
    DPM-Solver++ reference rule, Lu et al. 2022b), never for "never"."""
    return mode == "always" or (mode == "auto" and num_steps < 15)


def multistep_order(order: int, i: Array, num_steps: int, lower_order_final: str | bool = "never") -> Array:
    """int32 order of step i (0-based) of an `order`-step method over N steps: min(order, i + 1)
    (warm-up: only i + 1 points exist), further min(., N - i) when `lower_order_final` is active
    (a mode of LOWER_ORDER_FINAL or a bool). Traced in value, so the scan body is the same for every N."""
    lower = (
        lower_order_final
        if isinstance(lower_order_final, bool)
        else lower_order_final_active(lower_order_final, num_steps)
    )
    o = jnp.minimum(order, i + 1)
    # A select on a constant flag rather than a Python `if`: the traced program is the same for every N.
    o = jnp.where(lower, jnp.minimum(o, num_steps - i), o)
    return o.astype(jnp.int32)


def validate_multistep(
    name: str, order: int, max_order: int, num_steps: int, lower_order_final: str | None
) -> None:
    """ValueError unless 1 <= order <= max_order (int), num_steps >= order, and `lower_order_final`
    is None or one of LOWER_ORDER_FINAL."""
    if not isinstance(order, int) or not 1 <= order <= max_order:
        raise ValueError(f"{name}: `order` must be an integer in 1..{max_order}, got {order!r}")
    if num_steps < order:
        raise ValueError(
            f"{name}: an order-{order} multistep method needs at least {order} steps (it builds its history "
            f"from the previous steps), got {num_steps}; use more steps or a lower order"
        )
    if lower_order_final is not None and lower_order_final not in LOWER_ORDER_FINAL:
        raise ValueError(
            f"{name}: unknown `lower_order_final` {lower_order_final!r}; valid: {list(LOWER_ORDER_FINAL)}"
        )


class SampleOutput(NamedTuple):
    """samples [B, ...]; trajectory [N+1, B, ...] (z at every grid time, grid[0] first) or None;
    nfe int32 scalar: network evaluations actually used."""

    samples: Array
    trajectory: Array | None
    nfe: Array


def noise_like(keys: Array | None, z: Array) -> Array:
    """Standard normal noise [B, ...] with row b drawn from keys[b] only (batch-size invariant)."""
    if keys is None:
        raise ValueError("this sampler is stochastic: pass one PRNG key per sample (`keys`, shape [B])")
    if keys.shape != (z.shape[0],):
        raise ValueError(f"keys must have shape ({z.shape[0]},) (one per sample), got {keys.shape}")
    return jax.vmap(lambda k: jax.random.normal(k, z.shape[1:], z.dtype))(keys)


def step_noise(keys: Array | None, z: Array, j: int) -> Array:
    """The j-th independent N(0, I) draw [B, ...] of a step: row b from fold_in(keys[b], j), where
    `keys` are the step's per-sample keys (as handed to `update`)."""
    if keys is not None:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, j))(keys)
    return noise_like(keys, z)


def step_keys(keys: Array | None, i) -> Array | None:
    """Per-step keys: fold_in(sample_key, step index) for every sample."""
    if keys is None:
        return None
    return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Base class. Subclasses set `name` and implement `update` (and `init_aux` / `nfe` / `validate`
    when needed); see the module docstring for the contract.

    Public driver methods (not overridden by samplers):
      init(denoiser, z, grid) -> Carry
      step(denoiser, carry, t_cur, t_next, i, keys, num_steps) -> Carry   (one scan step)
      run(denoiser, z, grid, keys, return_trajectory) -> SampleOutput
      finalize(denoiser, carry) -> samples [B, ...]
    `nfe(num_steps, final_zero)`: final_zero means the last grid time has sigma = 0, where samplers
    that would evaluate the denoiser there take a cheaper step instead (e.g. EDM Alg. 1-2's Euler
    last step: Heun 2N - 1, not 2N).
    """

    name: ClassVar[str] = "base"
    stochastic: ClassVar[bool] = False
    # True: `run` needs a two-head [velocity, score] denoiser (objective.score_head; the sampling
    # plan selects that head and refuses runs without one before compiling).
    needs_score_head: ClassVar[bool] = False

    # ---- what a sampler implements -------------------------------------------------------------

    def init_aux(self, ev: Evaluator, z: Array, grid: Array) -> Any:
        """The sampler's own carry at grid[0] (default: none). Evaluations through `ev` count."""
        return ()

    def update(
        self, ev: Evaluator, carry: Carry, t_cur: Array, t_next: Array, i: Array, keys, num_steps: int
    ) -> tuple[Array, Any]:
        """One step t_cur -> t_next (scalars), step index i (int32), per-sample step keys [B] or None.
        Returns (z_next [B, ...], aux_next)."""
        raise NotImplementedError

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        """Network evaluations of a run over `num_steps` steps (the default: one per step, also on
        a final step to sigma = 0); equals the `nfe` the run counts."""
        return num_steps

    def validate(self, schedule: Schedule, num_steps: int) -> None:
        """Raise ValueError for impossible options / step counts, before compiling."""
        if num_steps < 1:
            raise ValueError(f"{self.name}: the grid needs at least 2 times (1 step), got {num_steps} steps")

    # ---- capability flags (properties of the instance) -----------------------------------------

    @property
    def needs_alpha(self) -> bool:
        """True when the update divides by alpha(t) where a step starts (logSNR / sigma~ = sigma/alpha
        coordinates, infinite where alpha = 0, e.g. rectified flow at t = 1)."""
        return False

    # ---- driver ----------------------------------------------------------------------------------

    def init(self, denoiser: Denoiser, z: Array, grid: Array) -> Carry:
        ev = Evaluator(denoiser)
        aux = self.init_aux(ev, z, grid)
        return Carry(z=z, nfe=jnp.asarray(ev.count, jnp.int32), aux=aux)

    def step(
        self, denoiser: Denoiser, carry, t_cur: Array, t_next: Array, i: Array, keys, num_steps: int
    ) -> Carry:
        """One counted step: `update` through an `Evaluator`, its evaluations added to carry.nfe.
        `carry` may be a Carry or a mapping with 'z', 'nfe' (and 'aux')."""
        carry = Carry.of(carry)
        ev = Evaluator(denoiser)
        z, aux = self.update(ev, carry, t_cur, t_next, i, keys, num_steps)
        return Carry(z=z, nfe=carry.nfe + jnp.asarray(ev.count, jnp.int32), aux=aux)

    def finalize(self, denoiser: Denoiser, carry: Carry) -> Array:
        return carry.z

    def check_grid(self, denoiser: Denoiser, grid: np.ndarray) -> None:
        """Raise ValueError if a concrete grid [N+1] cannot be used with `denoiser` (before compiling):
        alpha(t) ~ 0 where a step starts, for a sampler that `needs_alpha` or an eps / score model
        (x0-hat = (z - sigma eps) / alpha is undefined there)."""
        starts = np.asarray(grid, np.float64)[:-1]
        alp = np.asarray(denoiser.schedule.alpha(starts))
        bad = starts[~(alp > ALPHA_EPS)]
        if bad.size == 0:
            return
        if self.needs_alpha:
            raise ValueError(
                f"{self.name}: steps in logSNR / sigma/alpha coordinates need alpha(t) > 0 where a step "
                f"starts; grid times {bad} have alpha ~ 0 under {denoiser.schedule.name}. Start the grid below "
                f"t = 1 (grid t_max=0.999) or use a sampler that integrates in t ({ALPHA_FREE_ADVICE})"
            )
        if denoiser.kind in ("eps", "score"):
            raise ValueError(
                f"{self.name}: a {denoiser.kind!r}-prediction denoiser needs alpha(t) > 0 where a step starts "
                f"(x0-hat divides by alpha); grid times {bad} have alpha ~ 0 under {denoiser.schedule.name}. "
                "Start the grid below t = 1 (grid t_max=0.999)"
            )

    def check_traced_grid(self, denoiser: Denoiser) -> None:
        """Checks that `run` makes when the grid is traced (unknown before compiling): none by default."""

    def run(
        self,
        denoiser: Denoiser,
        z: Array,
        grid: Array,
        keys: Array | None = None,
        return_trajectory: bool = False,
    ) -> SampleOutput:
        """Integrate from z at grid[0] through grid[-1] (descending times, shape [N+1]).

        Args:
          denoiser: any `Denoiser` (any schedule, any prediction kind).
          z: [B, ...] initial state at time grid[0].
          grid: [N+1] descending times; explicit, so runs can be compared step by step elsewhere.
          keys: [B] typed PRNG keys, one per sample (required if `self.stochastic`).
          return_trajectory: also return z at every grid time.
        Returns: SampleOutput(samples [B, ...], trajectory [N+1, B, ...] or None, nfe int32).
        """
        grid = jnp.asarray(grid, z.dtype)
        if grid.ndim != 1:
            raise ValueError(f"grid must be 1-D [N+1], got shape {grid.shape}")
        num_steps = grid.shape[0] - 1
        self.validate(denoiser.schedule, num_steps)
        g = _concrete(grid)
        with jax.ensure_compile_time_eval():  # eager even while `run` is traced under jit
            if g is not None:
                self.check_grid(denoiser, g)
            else:
                self.check_traced_grid(denoiser)
        if self.stochastic and keys is None:
            noise_like(None, z)
        carry = self.init(denoiser, z, grid)

        def body(carry, xs):
            t_cur, t_next, i = xs
            carry = self.step(denoiser, carry, t_cur, t_next, i, step_keys(keys, i), num_steps)
            return carry, (carry.z if return_trajectory else None)

        carry, traj = jax.lax.scan(body, carry, (grid[:-1], grid[1:], jnp.arange(num_steps)))
        samples = self.finalize(denoiser, carry)
        if return_trajectory:
            traj = jnp.concatenate([z[None], traj], axis=0)
        return SampleOutput(samples, traj, carry.nfe)


# The advice given when a sampler cannot start where alpha = 0.
ALPHA_FREE_ADVICE = (
    "euler / heun / midpoint / rk4 with coords='t', ddim, dpmpp_2m, ddpm, ddim_eta, dopri5, tsit5"
)

# alpha below this counts as 0 (e.g. VPCosine's cos(pi/2) ~ 6e-17): dividing by it is meaningless.
ALPHA_EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class EpsHistorySampler(Sampler):
    """Base for the linear multistep samplers over a history of eps-hat's in sigma / alpha coordinates
    (iPNDM, LMS): `order` an integer in 1..4 (default 4); the carry's aux is a `History` of `order`
    entries (`history_init` / `history_push`)."""

    needs_alpha = True  # sigma~ = sigma / alpha coordinates (see Sampler.needs_alpha)
    order: int = 4

    def validate(self, schedule, num_steps) -> None:
        super().validate(schedule, num_steps)
        if not isinstance(self.order, int) or not 1 <= self.order <= 4:
            raise ValueError(f"{self.name}: `order` must be an integer in 1..4, got {self.order!r}")

    def init_aux(self, ev, z, grid) -> History:
        return history_init(self.order, z, grid.dtype)


def _concrete(grid) -> np.ndarray | None:
    """The grid as numpy if it is known at trace time (numpy / concrete jax array), else None."""
    try:
        return np.asarray(grid, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def prior_sample(
    key: Array, shape: tuple[int, ...], schedule: Schedule, t_max: float | None = None, dtype=None
):
    """z ~ N(0, sigma(t_max)^2 I): the standard prior at the start time (the alpha x term is
    neglected, as in every reference sampler; it is exactly 0 where alpha(1) = 0)."""
    t_max = schedule.t_max if t_max is None else t_max
    dtype = dtype or jnp.result_type(float)
    return schedule.sigma(jnp.asarray(t_max, dtype)) * jax.random.normal(key, shape, dtype)
