"""Deterministic single-step samplers of the probability-flow ODE.

All of them follow the `base.Sampler` interface (init + step over (t_cur, t_next), one `lax.scan`),
query the denoiser only through x0 / eps / velocity predictions, and therefore work with any schedule
and any prediction kind.

ODE coordinates of the Runge-Kutta family (Euler, Heun, midpoint, RK4), field `coords`:
  * ``"t"`` (default): dz/dt = v(z, t) = alpha'(t) x0-hat + sigma'(t) eps-hat, the probability-flow
    ODE in velocity form (Song et al. 2021, eq. 13; Lipman et al. 2023, eq. 1), in the schedule's time.
    For the EDM schedule (alpha = 1, sigma = sigma_max t) this is exactly EDM's ODE.
  * ``"sigma"``: EDM's rescaled coordinates x~ = z / alpha, sigma~ = sigma / alpha, in which the ODE is
    dx~/dsigma~ = eps-hat (Karras et al. 2022, eq. 4 with s(t) = 1, sigma(t) = t; Song et al. 2021,
    "DDIM", eq. 14). Intermediate times are mapped back with t = t_from_logsnr(-2 log sigma~). Needs
    alpha(t) > 0 on the grid (not RF/VP-cosine at t = 1).

Steps that land on sigma(t_next) = 0 (a grid ending at t = 0 on every schedule but VE): methods that
would evaluate the denoiser there (Heun's corrector, RK4's last stage) take an Euler step instead, as
EDM Algorithm 1 (line 7: "if sigma_{i+1} != 0") does; the DPM-Solver family takes the first-order
limit z_next = alpha(t_next) x0-hat(z, t_cur) (logSNR(t_next) = +inf). Exception: a
velocity-parameterised model (`Denoiser.kind == "velocity"`, the flow-matching / rectified-flow
setting on [0, 1]) integrated in ``coords="t"`` is well defined at sigma = 0 (its network is trained
on the closed interval), so Heun and RK4 take their full step on the last interval too
(`_ODERK.euler_onto_zero`); otherwise RK4's observed order would drop to 2 (one O(h^2) Euler step). The branch is a `lax.cond`
on the (unbatched) time, so only the branch taken costs network evaluations, and `Carry.nfe`
counts what was evaluated (through `base.Evaluator.cond`). `nfe(N, final_zero)` gives the same count statically; `final_zero` means
"the last grid time has sigma = 0".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.base import Sampler
from diffusion_jax.schedules import Schedule

Array = jax.Array

COORDS = ("t", "sigma")


def is_zero_sigma(schedule: Schedule, t: Array) -> Array:
    """Boolean scalar: sigma(t) == 0 (t lands on clean data, logSNR = +inf)."""
    return schedule.sigma(t) <= 0


def half_lambda(schedule: Schedule, t: Array) -> Array:
    """DPM-Solver's lambda = log(alpha / sigma) = logSNR / 2 (Lu et al. 2022, sec. 3.1)."""
    return 0.5 * schedule.logsnr(t)


def t_from_half_lambda(schedule: Schedule, lam: Array) -> Array:
    """Inverse of `half_lambda`."""
    return schedule.t_from_logsnr(2.0 * lam)


def _check_coords(name: str, coords: str) -> None:
    if coords not in COORDS:
        raise ValueError(f"{name}: unknown `coords` {coords!r}; valid: {list(COORDS)}")


# -------------------------------------------------------------------------------------------------
# Runge-Kutta family on the probability-flow ODE
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ODERK(Sampler):
    """Shared chart for explicit Runge-Kutta methods: state y and integration variable tau.

    coords="t":     y = z,          tau = t,                 dy/dtau = velocity-hat(z, t)
    coords="sigma": y = z / alpha,  tau = sigma / alpha,     dy/dtau = eps-hat(z, t)
    """

    coords: str = "t"

    @property
    def needs_alpha(self) -> bool:
        """sigma~ = sigma / alpha coordinates divide by alpha; t coordinates do not."""
        return self.coords == "sigma"

    def validate(self, schedule: Schedule, num_steps: int) -> None:
        super().validate(schedule, num_steps)
        _check_coords(self.name, self.coords)

    def _tau(self, s: Schedule, t):
        return t if self.coords == "t" else s.sigma(t) / s.alpha(t)

    def _t(self, s: Schedule, tau):
        return tau if self.coords == "t" else s.t_from_logsnr(-2.0 * jnp.log(tau))

    def _to_y(self, s: Schedule, z, t):
        return z if self.coords == "t" else z / s.alpha(t)

    def _to_z(self, s: Schedule, y, t):
        return y if self.coords == "t" else y * s.alpha(t)

    def _f(self, den, y, t):
        z = self._to_z(den.schedule, y, t)
        return den.velocity(z, t) if self.coords == "t" else den.eps(z, t)

    def euler_onto_zero(self, denoiser) -> bool:
        """Whether a step onto sigma = 0 falls back to Euler: False only for a velocity-kind
        denoiser in t coordinates (the field is evaluated at t = 0 as anywhere else). Static."""
        return not (self.coords == "t" and getattr(denoiser, "kind", None) == "velocity")

    def _last_step(self, ev, t_next, euler: Callable, full: Callable):
        """`full` unless t_next has sigma = 0 and `euler_onto_zero` (then `euler`, via a counted cond)."""
        if not self.euler_onto_zero(ev):
            return full(None)
        return ev.cond(is_zero_sigma(ev.schedule, t_next), euler, full, None)

    def _start(self, ev, carry, t_cur, t_next):
        """The start of a multi-stage step: (schedule, y(t_cur), tau(t_cur), tau(t_next) - tau(t_cur))."""
        s = ev.schedule
        tau_c, tau_n = self._tau(s, t_cur), self._tau(s, t_next)
        return s, self._to_y(s, carry.z, t_cur), tau_c, tau_n - tau_c


@dataclasses.dataclass(frozen=True)
class Euler(_ODERK):
    """Euler's method on the probability-flow ODE: y_next = y + (tau_next - tau_cur) f(y, t_cur).

    With coords="t" this is Euler on dz/dt = velocity (flow-matching Euler, Lipman et al. 2023); with
    coords="sigma" it is EDM's Euler (Karras et al. 2022, Algorithm 1 without line 7), which equals
    DDIM with eta = 0 (Song et al. 2021, "DDIM", eq. 14). NFE: N (one evaluation at t_cur per step).
    """

    name: ClassVar[str] = "euler"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        y = self._to_y(s, carry.z, t_cur)
        y = y + (self._tau(s, t_next) - self._tau(s, t_cur)) * self._f(ev, y, t_cur)
        return self._to_z(s, y, t_next), ()

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return num_steps


@dataclasses.dataclass(frozen=True)
class Heun(_ODERK):
    """Heun's second-order method, EDM Algorithm 1 (Karras et al. 2022): an Euler predictor and the
    trapezoidal corrector, except when sigma(t_next) = 0, where the Euler step is kept (Algorithm 1,
    line 7) unless the model is velocity-parameterised (`euler_onto_zero`).

    NFE: 2N; 2N - 1 when the last step is that Euler step (EDM's count, e.g. 35 NFE for 18 steps).
    """

    name: ClassVar[str] = "heun"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        y = self._to_y(s, carry.z, t_cur)
        dtau = self._tau(s, t_next) - self._tau(s, t_cur)
        d1 = self._f(ev, y, t_cur)
        y_e = y + dtau * d1

        def corrector(_):
            d2 = self._f(ev, y_e, t_next)
            return y + 0.5 * dtau * (d1 + d2)

        y_next = self._last_step(ev, t_next, lambda _: y_e, corrector)
        return self._to_z(s, y_next, t_next), ()

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return 2 * num_steps - (1 if final_zero else 0)


@dataclasses.dataclass(frozen=True)
class Midpoint(_ODERK):
    """Explicit midpoint method (second order; Hairer et al., "Solving ODEs I", II.1): an Euler
    half-step to tau_mid = (tau_cur + tau_next) / 2, then the full step with the slope there.

    The midpoint is never at sigma = 0, so the step to t = 0 needs no special case. NFE: 2N.
    """

    name: ClassVar[str] = "midpoint"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s, y, tau_c, dtau = self._start(ev, carry, t_cur, t_next)
        t_mid = self._t(s, tau_c + 0.5 * dtau)
        d1 = self._f(ev, y, t_cur)
        d2 = self._f(ev, y + 0.5 * dtau * d1, t_mid)
        return self._to_z(s, y + dtau * d2, t_next), ()

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return 2 * num_steps


@dataclasses.dataclass(frozen=True)
class RK4(_ODERK):
    """The classical fourth-order Runge-Kutta method (Kutta 1901; Hairer et al., "Solving ODEs I",
    Table II.1.2). Its last stage evaluates at t_next, so a step to sigma = 0 is an Euler step instead
    (the same convention as EDM's Heun), unless the model is velocity-parameterised (`euler_onto_zero`).

    NFE: 4N; 4N - 3 when the last step is that Euler step.
    """

    name: ClassVar[str] = "rk4"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s, y, tau_c, dtau = self._start(ev, carry, t_cur, t_next)
        k1 = self._f(ev, y, t_cur)

        def rk4(_):
            t_mid = self._t(s, tau_c + 0.5 * dtau)
            k2 = self._f(ev, y + 0.5 * dtau * k1, t_mid)
            k3 = self._f(ev, y + 0.5 * dtau * k2, t_mid)
            k4 = self._f(ev, y + dtau * k3, t_next)
            return y + dtau / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

        y_next = self._last_step(ev, t_next, lambda _: y + dtau * k1, rk4)
        return self._to_z(s, y_next, t_next), ()

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return 4 * num_steps - (3 if final_zero else 0)


# -------------------------------------------------------------------------------------------------
# DDIM and DPM-Solver (exponential integrators)
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DDIM(Sampler):
    """Deterministic DDIM, eta = 0 (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12
    with sigma_t = 0): z_next = alpha(t_next) x0-hat + sigma(t_next) eps-hat, both from one call at
    (z, t_cur). It is Euler's method in (z / alpha, sigma / alpha) coordinates (eq. 14), and on the
    rectified-flow path it is the flow-matching Euler step. Well defined at sigma(t_next) = 0.

    NFE: N. The stochastic eta > 0 variant lives with the stochastic samplers.
    """

    name: ClassVar[str] = "ddim"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        x0, eps = ev.x0_eps(carry.z, t_cur)
        return s.alpha(t_next) * x0 + s.sigma(t_next) * eps, ()

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return num_steps


@dataclasses.dataclass(frozen=True)
class DPMSolver(Sampler):
    """Single-step DPM-Solver-1/2/3 with noise prediction (Lu et al. 2022, "DPM-Solver", in
    lambda = log(alpha/sigma) = logSNR/2, h = lambda_next - lambda_cur):

      order 1 (eq. 3.7, = DDIM):  z' = (a'/a) z - s' (e^h - 1) eps(z, t)
      order 2 (Algorithm 1, r1):  u = (a_s/a) z - s_s (e^{r1 h} - 1) eps,  s at lambda + r1 h,
                                  z' = (a'/a) z - s' (e^h - 1) eps - s'/(2 r1) (e^h - 1) (eps(u, s) - eps)
      order 3 (Algorithm 2, r1, r2):
          u1 = (a_s1/a) z - s_s1 (e^{r1 h} - 1) eps,                 D1 = eps(u1, s1) - eps
          u2 = (a_s2/a) z - s_s2 (e^{r2 h} - 1) eps - s_s2 r2/r1 ((e^{r2 h} - 1)/(r2 h) - 1) D1
          D2 = eps(u2, s2) - eps
          z' = (a'/a) z - s' (e^h - 1) eps - s'/r2 ((e^h - 1)/h - 1) D2

    with a = alpha, s = sigma, primes at t_next. Defaults r1 = 1/2 (order 2), r1 = 1/3, r2 = 2/3
    (order 3), as in the paper. Intermediate times are t = t_from_logsnr(2 (lambda + r h)).
    A step to sigma(t_next) = 0 (h = inf) is the first-order limit z' = alpha(t_next) x0-hat(z, t).

    NFE: order * N; order * (N - 1) + 1 when the grid ends at sigma = 0.
    """

    needs_alpha = True  # logSNR coordinates (see Sampler.needs_alpha)

    name: ClassVar[str] = "dpm_solver"
    order: int = 2
    r1: float | None = None
    r2: float | None = None

    def _rs(self):
        r1 = self.r1 if self.r1 is not None else (0.5 if self.order == 2 else 1.0 / 3.0)
        r2 = self.r2 if self.r2 is not None else 2.0 / 3.0
        return r1, r2

    def validate(self, schedule: Schedule, num_steps: int) -> None:
        super().validate(schedule, num_steps)
        if self.order not in (1, 2, 3):
            raise ValueError(f"{self.name}: `order` must be 1, 2 or 3, got {self.order!r}")
        r1, r2 = self._rs()
        if self.order >= 2 and not 0.0 < r1 < 1.0:
            raise ValueError(f"{self.name}: need 0 < r1 < 1, got r1={r1}")
        if self.order == 3 and not r1 < r2 < 1.0:
            raise ValueError(f"{self.name}: order 3 needs r1 < r2 < 1, got r1={r1}, r2={r2}")

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        z = carry.z
        order = self.order
        r1, r2 = self._rs()

        def full(_):
            a = s.alpha(t_cur)
            an, sn = s.alpha(t_next), s.sigma(t_next)
            lam = half_lambda(s, t_cur)
            h = half_lambda(s, t_next) - lam
            eps = ev.eps(z, t_cur)
            base = (an / a) * z - sn * jnp.expm1(h) * eps
            if order == 1:
                return base
            t1 = t_from_half_lambda(s, lam + r1 * h)
            u1 = (s.alpha(t1) / a) * z - s.sigma(t1) * jnp.expm1(r1 * h) * eps
            d1 = ev.eps(u1, t1) - eps
            if order == 2:
                return base - sn / (2.0 * r1) * jnp.expm1(h) * d1
            t2 = t_from_half_lambda(s, lam + r2 * h)
            a2, s2 = s.alpha(t2), s.sigma(t2)
            u2 = (
                (a2 / a) * z
                - s2 * jnp.expm1(r2 * h) * eps
                - s2 * r2 / r1 * (jnp.expm1(r2 * h) / (r2 * h) - 1.0) * d1
            )
            d2 = ev.eps(u2, t2) - eps
            return base - sn / r2 * (jnp.expm1(h) / h - 1.0) * d2

        def to_zero(_):
            return s.alpha(t_next) * ev.x0(z, t_cur)

        return ev.cond(is_zero_sigma(s, t_next), to_zero, full, None), ()

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return self.order * num_steps - ((self.order - 1) if final_zero else 0)


@dataclasses.dataclass(frozen=True)
class DPMSolver1(DPMSolver):
    """DPM-Solver-1 (Lu et al. 2022, eq. 3.7): `DPMSolver(order=1)`, the same update as DDIM."""

    name: ClassVar[str] = "dpm_solver_1"
    order: int = 1


@dataclasses.dataclass(frozen=True)
class DPMSolver2(DPMSolver):
    """DPM-Solver-2 (Lu et al. 2022, Algorithm 1, r1 = 1/2): `DPMSolver(order=2)`."""

    name: ClassVar[str] = "dpm_solver_2"
    order: int = 2


@dataclasses.dataclass(frozen=True)
class DPMSolver3(DPMSolver):
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 2, r1 = 1/3, r2 = 2/3): `DPMSolver(order=3)`."""

    name: ClassVar[str] = "dpm_solver_3"
    order: int = 3


__all__ = [
    "COORDS",
    "DDIM",
    "DPMSolver",
    "DPMSolver1",
    "DPMSolver2",
    "DPMSolver3",
    "Euler",
    "Heun",
    "Midpoint",
    "RK4",
    "half_lambda",
    "is_zero_sigma",
    "t_from_half_lambda",
]
