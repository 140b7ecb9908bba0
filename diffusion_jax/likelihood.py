"""Probability-flow ODE log-likelihood and bits/dim.

For the path z_t = alpha x + sigma eps the probability-flow ODE is dz/dt = v(z, t), with v the
marginal velocity alpha' x0-hat + sigma' eps-hat (`Denoiser.velocity`; equal to Song et al. 2021's
f z - g^2/2 score). Along its solution the instantaneous change of variables (Chen et al. 2018;
Grathwohl et al. 2019, "FFJORD", eq. 4) gives d log p_t(z_t) / dt = -div v(z_t, t), hence
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. D.2, eq. 40)

    log p_{t_min}(x) = log p_{t_max}(z(t_max)) + int_{t_min}^{t_max} div v(z(t), t) dt,  z(t_min) = x.

The augmented ODE (z, int div) is integrated in-graph with diffrax (Tsit5 or Dopri5, adaptive PID
steps with rtol / atol), one independent solve per sample (vmapped), so a sample's value does not
depend on the batch. Divergence: `exact` (the trace of the per-sample Jacobian by forward mode; D JVPs,
for low dimension) or Hutchinson's estimator E[e^T J e] (Hutchinson 1989; FFJORD sec. 3.1) with
`rademacher` or `gaussian` probes e drawn from an explicit key and held fixed along the trajectory.

Prior: by default log N(z(t_max); 0, sigma(t_max)^2 I), as in Song et al. 2021 and FFJORD-style
evaluations. That ignores the alpha(t_max) x part of z(t_max) (exact only when alpha(t_max) = 0) and
the data variance next to sigma(t_max)^2: the leading neglected term is alpha z^T E[x] / sigma^2, about
1e-2 nats for unit-scale data on VP-linear (alpha(1) = 6.6e-3) or EDM (sigma_max = 80). Pass
`prior_logp` for the exact marginal when it is known (the tests do, and reach 1e-6 nats).

Step control at batch size (`step_control`): "per_sample" (default) vmaps one adaptive solve per
sample, so a value never depends on the rest of the batch; but a vmapped `while_loop` runs every
sample until the slowest has finished and carries B step-size controllers through it. "batch" solves
the batch as one system on one time grid, with the PID controller's error norm = the max over samples
of each sample's RMS scaled error: a step is accepted iff every sample's own per-sample test would
accept it, so each sample meets its tolerance, the divergence and the velocity of all samples are one
batched network call per stage, and the controller state is a scalar. Measured in
`benchmarks/likelihood.py` against a host-side scipy solve at equal accuracy.

NFE: Tsit5 and Dopri5 are 7-stage FSAL methods; with the explicit initial step used here a solve
costs 1 + 6 * (accepted + rejected steps) evaluations of v (plus its divergence), reported per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.predictions import Denoiser

Array = jax.Array

DIVERGENCES = ("exact", "rademacher", "gaussian")
STEP_CONTROLS = ("per_sample", "batch")
SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}


class LikelihoodOutput(NamedTuple):
    """logp [B]: log p_{t_min}(x) in nats; nfe [B] int32: velocity evaluations per sample;
    z_end [B, ...]: the ODE state at t_max; prior_logp [B]; delta [B]: int div v dt."""

    logp: Array
    nfe: Array
    z_end: Array
    prior_logp: Array
    delta: Array


def _velocity_single(denoiser: Denoiser):
    """v(z, t) for one sample z [...] (the denoiser sees a batch of one)."""

    def v(z, t):
        return denoiser.velocity(z[None], jnp.asarray(t, z.dtype)[None])[0]

    return v


def value_and_divergence(f, z: Array, probes: Array | None = None):
    """(v, aux, div v) at one sample z [...] from a single linearisation of f: z -> (v [...], aux).

    div v = tr(dv/dz): exactly when probes is None (D Jacobian-vector products along the basis
    vectors from the one linearisation: tr J = sum_i (J e_i)_i), else Hutchinson's estimator
    (Hutchinson 1989; FFJORD, Grathwohl et al. 2019, eq. 7): the mean over probes [P, ...] (any
    distribution with E[e e^T] = I) of e^T J e. aux: whatever else f computes from the same network
    call (the fixed-step solvers' x0 / eps), not differentiated.
    """
    shape = z.shape

    def flat(u):
        v, aux = f(u.reshape(shape))
        return v.reshape(-1), aux

    v, jvp, aux = jax.linearize(flat, z.reshape(-1), has_aux=True)
    if probes is None:
        div = jnp.trace(jax.vmap(jvp)(jnp.eye(v.size, dtype=v.dtype)))
    else:
        div = jnp.mean(jax.vmap(lambda e: jnp.sum(e.reshape(-1) * jvp(e.reshape(-1))))(probes))
    return v.reshape(shape), aux, div


def divergence(denoiser: Denoiser, z: Array, t, method: str = "exact", probes: Array | None = None) -> Array:
    """div_z v(z, t) per sample, exactly or by Hutchinson's estimator (`value_and_divergence`).

    Args:
      z: [B, ...] states; t: scalar time.
      method: "exact" (trace of the [D, D] Jacobian) or "hutchinson" with `probes` [B, P, ...] (any
        distribution with E[e e^T] = I): the mean over P of e^T J e.
    Returns: [B] divergences.
    """
    v = _velocity_single(denoiser)
    f = lambda u: (v(u, t), ())  # noqa: E731
    if method == "exact":
        return jax.vmap(lambda zi: value_and_divergence(f, zi)[2])(z)
    if method != "hutchinson":
        raise ValueError(f"divergence: unknown method {method!r}; valid: ['exact', 'hutchinson']")
    if probes is None or probes.shape[0] != z.shape[0] or probes.shape[2:] != z.shape[1:]:
        raise ValueError(f"divergence: hutchinson needs probes [B, P, ...] matching z {z.shape}")
    return jax.vmap(lambda zi, ei: value_and_divergence(f, zi, ei)[2])(z, probes)


def draw_probes(key: Array, shape: tuple[int, ...], kind: str, dtype) -> Array:
    """Hutchinson probes of `shape`: Rademacher (+-1) or standard Gaussian, both with E[e e^T] = I."""
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype=dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    raise ValueError(f"unknown probe kind {kind!r}; valid: ['rademacher', 'gaussian']")


def prior_log_density(
    denoiser: Denoiser, t_max: float, prior_logp=None, source=None, caller: str = "log_likelihood"
) -> Callable[[Array], Array]:
    """The log-density of the ODE's end state z(t_max), z [B, ...] -> [B]: `source.log_prob`, or
    `prior_logp`, or by default log N(0, sigma(t_max)^2 I) (the marginal of the forward process when
    alpha(t_max) x is negligible). Raises ValueError, prefixed by `caller`, before any compilation:
    both given, a source without a density, or sigma(t_max) = 0 with the default prior."""
    if source is not None:
        if prior_logp is not None:
            raise ValueError(f"{caller}: pass either source or prior_logp, not both")
        if not getattr(source, "has_density", False):
            raise ValueError(
                f"{caller}: source {getattr(source, 'name', source)!r} has no log-density; the likelihood "
                "needs one (gaussian, an analytic distribution, or sampler_source(..., log_prob=...))"
            )
        return source.log_prob
    if prior_logp is not None:
        return prior_logp
    with jax.ensure_compile_time_eval():
        sig = float(denoiser.schedule.sigma(np.float64(t_max)))
    if not sig > 0:
        raise ValueError(f"{caller}: sigma(t_max={t_max}) = {sig}; the default N(0, sigma^2) prior needs > 0")

    def gaussian(z):
        d = int(np.prod(z.shape[1:]))
        lp = -0.5 * jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=1) / sig**2
        return lp - 0.5 * d * (math.log(2 * math.pi) + 2 * math.log(sig))

    return gaussian


def log_likelihood(
    denoiser: Denoiser,
    x: Array,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    divergence_method: str = "exact",
    key: Array | None = None,
    num_probes: int = 1,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    prior_logp: Callable[[Array], Array] | None = None,
    source=None,
    max_steps: int = 4096,
    dt0: float | None = None,
    step_control: str = "per_sample",
) -> LikelihoodOutput:
    """log p_{t_min}(x) [B] by the probability-flow ODE (see the module docstring).

    Args:
      denoiser: any `Denoiser` (any schedule, any prediction kind).
      x: [B, ...] data points (in the model's data scale).
      t_min, t_max: integration interval (default the schedule's); t_min is where x sits.
      divergence_method: "exact", "rademacher" or "gaussian" (Hutchinson with `num_probes` probes per
        sample, drawn from `key` and fixed along the trajectory).
      key: PRNG key, required for Hutchinson (probes [B, num_probes, ...] from this key).
      solver: "tsit5" or "dopri5"; rtol, atol: PID step-size tolerances; max_steps: step cap.
      prior_logp: log-density of z(t_max), z [B, ...] -> [B]; default log N(0, sigma(t_max)^2 I).
      source: an `interpolants.Source` (the run's distribution at t = 1): its log-density is the
        prior (t_max should then be 1, where the path is the source). A source without a density is
        refused (ValueError) before compiling. Exclusive with prior_logp.
      dt0: initial step (default (t_max - t_min) / 64); adaptive afterwards.
      step_control: "per_sample" (independent solves) or "batch" (one shared step size, error norm
        = max over samples of the per-sample RMS; see the module docstring).
    Returns: LikelihoodOutput(logp [B], nfe [B], z_end [B, ...], prior_logp [B], delta [B]).
    Raises ValueError for bad names / intervals / missing key, before compiling.
    """
    sch = denoiser.schedule
    if divergence_method not in DIVERGENCES:
        raise ValueError(
            f"log_likelihood: unknown divergence_method {divergence_method!r}; valid: {list(DIVERGENCES)}"
        )
    if step_control not in STEP_CONTROLS:
        raise ValueError(
            f"log_likelihood: unknown step_control {step_control!r}; valid: {list(STEP_CONTROLS)}"
        )
    if solver not in SOLVERS:
        raise ValueError(f"log_likelihood: unknown solver {solver!r}; valid: {sorted(SOLVERS)}")
    t0 = float(sch.t_min if t_min is None else t_min)
    t1 = float(sch.t_max if t_max is None else t_max)
    if not 0.0 <= t0 < t1:
        raise ValueError(f"log_likelihood: need 0 <= t_min < t_max, got t_min={t0}, t_max={t1}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"log_likelihood: rtol and atol must be > 0, got {rtol}, {atol}")
    hutch = divergence_method != "exact"
    if hutch and (key is None or num_probes < 1):
        raise ValueError("log_likelihood: Hutchinson divergence needs an explicit `key` and num_probes >= 1")
    prior = prior_log_density(denoiser, t1, prior_logp, source)
    x = jnp.asarray(x)
    dtype = x.dtype
    shape = x.shape[1:]
    probes = (
        draw_probes(key, (x.shape[0], num_probes) + shape, divergence_method, dtype)
        if hutch
        else jnp.zeros((x.shape[0], 0) + shape, dtype)
    )
    v = _velocity_single(denoiser)

    def field(t, y, e):
        vz, _, div = value_and_divergence(lambda u: (v(u, t), ()), y[0], e if hutch else None)
        return vz, div

    term = diffrax.ODETerm(field)
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    step0 = (t1 - t0) / 64.0 if dt0 is None else float(dt0)

    def solve(xi, ei):
        sol = diffrax.diffeqsolve(
            term,
            SOLVERS[solver](),
            t0=t0,
            t1=t1,
            dt0=step0,
            y0=(xi, jnp.zeros((), dtype)),
            args=ei,
            stepsize_controller=controller,
            max_steps=max_steps,
        )
        z_end, delta = sol.ys[0][-1], sol.ys[1][-1]
        return z_end, delta, 1 + 6 * sol.stats["num_steps"]

    if step_control == "per_sample":
        z_end, delta, nfe = jax.vmap(solve)(x, probes)
    else:
        z_end, delta, nfe = _solve_batch(
            field, SOLVERS[solver](), x, probes, (t0, t1, step0), (rtol, atol), max_steps
        )
    lp = prior(z_end)
    return LikelihoodOutput(lp + delta, nfe.astype(jnp.int32), z_end, lp, delta)


def _batch_max_rms(err) -> Array:
    """Max over samples of the per-sample RMS of the scaled error (z [B, ...], delta [B])."""
    ez, ed = err
    sq = jnp.sum(ez.reshape(ez.shape[0], -1) ** 2, axis=1) + ed**2
    return jnp.sqrt(jnp.max(sq) / (ez[0].size + 1))


def _solve_batch(field, solver, x, probes, interval, tols, max_steps):
    """One diffrax solve of the whole batch on a shared grid (step_control="batch")."""
    t0, t1, step0 = interval
    term = diffrax.ODETerm(lambda t, y, e: jax.vmap(lambda z, ei: field(t, (z, None), ei))(y[0], e))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=t0,
        t1=t1,
        dt0=step0,
        y0=(x, jnp.zeros(x.shape[:1], x.dtype)),
        args=probes,
        stepsize_controller=diffrax.PIDController(rtol=tols[0], atol=tols[1], norm=_batch_max_rms),
        max_steps=max_steps,
    )
    nfe = jnp.full(x.shape[:1], 1 + 6 * sol.stats["num_steps"])
    return sol.ys[0][-1], sol.ys[1][-1], nfe


def dequantize(x_uint8: Array, key: Array, dtype=None) -> Array:
    """Uniform dequantization of integer images in [0, 255] to the model scale [-1, 1]:
    y = 2 (x + u) / 256 - 1, u ~ U[0, 1) (Theis et al. 2016; Ho et al. 2020, sec. 3.3 uses bins of
    width 2/256 on [-1, 1])."""
    dtype = dtype or jnp.result_type(float)
    x = jnp.asarray(x_uint8, dtype)
    u = jax.random.uniform(key, x.shape, dtype)
    return 2.0 * (x + u) / 256.0 - 1.0


def bits_per_dim(denoiser: Denoiser, x_uint8: Array, key: Array, **kwargs) -> tuple[Array, Array]:
    """Bits/dim of integer data [B, ...] in [0, 255] under the model on [-1, 1]:
    -log2 P(x) / D <= (-log p(y) + D log 128) / (D ln 2), y the dequantized point (each bin has width
    1/128 in the model scale, so its probability is at least p(y) / 128^D on average; Theis et al.
    2016). One dequantization draw per sample. kwargs go to `log_likelihood` (its `key` is derived).

    Returns (bpd [B], nfe [B])."""
    k_deq, k_probe = jax.random.split(key)
    y = dequantize(x_uint8, k_deq)
    out = log_likelihood(denoiser, y, key=k_probe, **kwargs)
    d = int(np.prod(y.shape[1:]))
    bpd = (-out.logp + d * math.log(128.0)) / (d * math.log(2.0))
    return bpd, out.nfe


__all__ = [
    "DIVERGENCES",
    "SOLVERS",
    "STEP_CONTROLS",
    "LikelihoodOutput",
    "bits_per_dim",
    "dequantize",
    "divergence",
    "draw_probes",
    "log_likelihood",
    "prior_log_density",
]
