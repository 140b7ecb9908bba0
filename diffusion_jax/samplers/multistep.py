"""Multistep (and the DPM-Solver++ single-step 2S) exponential integrators and iPNDM.

History lives in the scan carry (`Carry.aux`) as a `base.History` of fixed-size buffers, most
recent first: values [K, B, ...] past predictions (x0-hat for DPM-Solver++ / UniPC, eps-hat for
iPNDM) and times [K] (lambda = logSNR / 2 for DPM-Solver++ / UniPC, sigma~ for iPNDM), kept with the
public helpers of `base` (`history_init`, `history_push`, `multistep_order`), which samplers written
outside the package use too.
The order used at step i (0-based, N steps) is static in structure but traced in value,
  order_i = min(order, i + 1)                      (warm-up: only i + 1 points exist)
  order_i = min(order_i, N - i)                    (when `lower_order_final` is active)
and the update is a `lax.switch` over the orders 1..order, so the compiled scan body is the same for
every N.

`lower_order_final` (DPM-Solver++ / UniPC): "auto" (default) lowers the order of the last steps only
when N < 15 — the rule of the DPM-Solver++ reference code, which found it stabilises few-step sampling
(Lu et al. 2022b, sec. 5 / appendix) — "always" does it for every N (the UniPC reference default),
"never" keeps the full order to the end (what the convergence-order tests use). The DPM-Solver++ SDE
multistep solvers (`stochastic.DPMpp2MSDE` / `DPMpp3MSDE`) take the same option with the same rule.

Steps that land on sigma(t_next) = 0 (logSNR = +inf, h = inf): every method here follows the
DPM-Solver++ convention and takes the first-order data-prediction limit z_next = alpha(t_next) x0-hat,
i.e. the denoised estimate at t_cur (Lu et al. 2022b, eq. 9 with sigma_next = 0); the higher-order
differences would be multiplied by h = inf. This costs no extra NFE (x0-hat at t_cur is evaluated
anyway). iPNDM works in sigma~ = sigma/alpha and needs no special case (sigma~ = 0 is a regular point).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.base import (
    LOWER_ORDER_FINAL,
    EpsHistorySampler,
    History,
    Sampler,
    history_init,
    history_push,
    multistep_order,
    validate_multistep,
)
from diffusion_jax.samplers.deterministic import half_lambda, is_zero_sigma, t_from_half_lambda
from diffusion_jax.schedules import Schedule

Array = jax.Array

UNIPC_VARIANTS = ("bh1", "bh2")


# -------------------------------------------------------------------------------------------------
# DPM-Solver++ (data prediction)
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2S(Sampler):
    """DPM-Solver++(2S), single-step second order with data prediction (Lu et al. 2022b,
    "DPM-Solver++", Algorithm 1, r = 1/2). With h = lambda_next - lambda_cur, s at lambda_cur + r h:
        u  = (sigma_s / sigma) z - alpha_s (e^{-r h} - 1) x0(z, t)
        D  = (1 - 1/(2r)) x0(z, t) + 1/(2r) x0(u, s)
        z' = (sigma' / sigma) z - alpha' (e^{-h} - 1) D
    NFE: 2N; 2N - 1 when the grid ends at sigma = 0 (that step is z' = alpha' x0-hat).
    """

    needs_alpha = True  # logSNR coordinates (see Sampler.needs_alpha)

    name: ClassVar[str] = "dpmpp_2s"
    r: float = 0.5

    def validate(self, schedule: Schedule, num_steps: int) -> None:
        super().validate(schedule, num_steps)
        if not 0.0 < self.r < 1.0:
            raise ValueError(f"{self.name}: need 0 < r < 1, got r={self.r}")

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        z = carry.z
        x0 = ev.x0(z, t_cur)

        def full(_):
            lam = half_lambda(s, t_cur)
            h = half_lambda(s, t_next) - lam
            t_s = t_from_half_lambda(s, lam + self.r * h)
            sg = s.sigma(t_cur)
            u = (s.sigma(t_s) / sg) * z - s.alpha(t_s) * jnp.expm1(-self.r * h) * x0
            x0_s = ev.x0(u, t_s)
            d = (1.0 - 0.5 / self.r) * x0 + (0.5 / self.r) * x0_s
            return (s.sigma(t_next) / sg) * z - s.alpha(t_next) * jnp.expm1(-h) * d

        def to_zero(_):
            return s.alpha(t_next) * x0

        return ev.cond(is_zero_sigma(s, t_next), to_zero, full, None), ()

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return 2 * num_steps - (1 if final_zero else 0)


@dataclasses.dataclass(frozen=True)
class DPMSolverPPMultistep(Sampler):
    """DPM-Solver++ multistep with data prediction (Lu et al. 2022b, "DPM-Solver++", Algorithm 2 for
    2M; the third-order multistep of the same exponential-integrator expansion for 3M).

    The exact solution z' = (sigma'/sigma) z + alpha' int_0^h e^{-(h - tau)} x0(lambda + tau) dtau
    with x0 expanded to order k - 1 in lambda around lambda_cur, the derivatives taken from divided
    differences of the stored x0-hat's (h = lambda_next - lambda_cur, h_j the past step sizes,
    r_j = h_j / h, phi1 = e^{-h} - 1, phi2 = phi1/h + 1, phi3 = phi2/h - 1/2):
      order 1: z' = (sigma'/sigma) z - alpha' phi1 x0_0                                 (= DDIM)
      order 2: z' = (sigma'/sigma) z - alpha' phi1 (x0_0 + (x0_0 - x0_1) / (2 r_0))      (Alg. 2)
      order 3: D1_0 = (x0_0 - x0_1)/r_0, D1_1 = (x0_1 - x0_2)/r_1,
               D1 = D1_0 + r_0/(r_0 + r_1) (D1_0 - D1_1)         (= h x0' + O(h^3))
               D2 = 2 (D1_0 - D1_1)/(r_0 + r_1)                    (= h^2 x0'' + O(h^3))
               z' = (sigma'/sigma) z - alpha' phi1 x0_0 + alpha' phi2 D1 - alpha' phi3 D2
    Warm-up steps use the orders available; see the module docstring for `lower_order_final` and for
    the step to sigma = 0. NFE: N (one x0-hat per step, at t_cur), with or without a final zero.
    """

    name: ClassVar[str] = "dpmpp_multistep"
    order: int = 2
    lower_order_final: str = "auto"

    def validate(self, schedule: Schedule, num_steps: int) -> None:
        super().validate(schedule, num_steps)
        validate_multistep(self.name, self.order, 3, num_steps, self.lower_order_final)

    def init_aux(self, ev, z, grid) -> History:
        return history_init(self.order, z, grid.dtype)

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        z = carry.z
        x0 = ev.x0(z, t_cur)
        lam = half_lambda(s, t_cur)
        aux = history_push(carry.aux, x0, lam)
        hist, hist_lam = aux
        order_i = multistep_order(self.order, i, num_steps, self.lower_order_final)

        def full(_):
            h = half_lambda(s, t_next) - lam
            sn, an = s.sigma(t_next), s.alpha(t_next)
            phi1 = jnp.expm1(-h)
            base = (sn / s.sigma(t_cur)) * z - an * phi1 * x0

            def o1(_):
                return base

            def o2(_):
                r0 = (lam - hist_lam[1]) / h
                return base - an * phi1 * (x0 - hist[1]) / (2.0 * r0)

            def o3(_):
                r0 = (lam - hist_lam[1]) / h
                r1 = (hist_lam[1] - hist_lam[2]) / h
                d1_0 = (x0 - hist[1]) / r0
                d1_1 = (hist[1] - hist[2]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
                phi2 = phi1 / h + 1.0
                phi3 = phi2 / h - 0.5
                return base + an * phi2 * d1 - an * phi3 * d2

            branches = [o1, o2, o3][: self.order]
            return jax.lax.switch(order_i - 1, branches, None)

        def to_zero(_):
            return s.alpha(t_next) * x0

        return jax.lax.cond(is_zero_sigma(s, t_next), to_zero, full, None), aux

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return num_steps


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2M(DPMSolverPPMultistep):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): `DPMSolverPPMultistep(order=2)`."""

    name: ClassVar[str] = "dpmpp_2m"
    order: int = 2


@dataclasses.dataclass(frozen=True)
class DPMSolverPP3M(DPMSolverPPMultistep):
    """DPM-Solver++(3M): `DPMSolverPPMultistep(order=3)` (third-order multistep, data prediction)."""

    name: ClassVar[str] = "dpmpp_3m"
    order: int = 3


# -------------------------------------------------------------------------------------------------
# UniPC
# -------------------------------------------------------------------------------------------------


def _unipc_rb(rks: Array, h: Array, variant: str, p: int):
    """UniPC's linear system (Zhao et al. 2023, "UniPC", Algorithm 2/3 and eq. (8)-(9), data
    prediction, hh = -h): for k = 1..p, row k of R is r^(k-1) (r = rks [p], the last entry 1) and
    b_k = k! hh phi_{k+1}(hh) / B(hh), with phi_1(x) = (e^x - 1)/x, phi_{k+1}(x) = (phi_k(x) - 1/k!)/x
    and B(h) = h (bh1) or e^h - 1 (bh2).
    Returns (R [p, p], b [p], B(hh), hh phi_1(hh) = e^{hh} - 1)."""
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    rows, bs = [], []
    factorial = 1
    for k in range(1, p + 1):
        rows.append(rks ** (k - 1))
        bs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return jnp.stack(rows), jnp.stack(bs), b_h, h_phi_1


@dataclasses.dataclass(frozen=True)
class UniPC(Sampler):
    """UniPC: the unified predictor-corrector of Zhao et al. 2023 ("UniPC", Algorithms 2-3), data
    prediction, B(h) = h ("bh1") or e^h - 1 ("bh2"), orders 1..3.

    Step i from t_cur to t_next with p = order_i: r_k = (lambda_{-k} - lambda_cur) / h for the p - 1
    previous points, D_k = (x0_{-k} - x0_cur) / r_k, and
      UniP-p (predictor):  z~ = (sigma'/sigma) z - alpha' (e^{-h} - 1) x0_cur - alpha' B(h) sum_k a_k D_k,
                            a = R_{p-1}^{-1} b_{p-1} (a = 1/2 for p = 2, as in the reference code);
      UniC-p (corrector):  x0~ = x0-hat(z~, t_next) (the NFE reused by the next step),
                            z' = (same first-order part) - alpha' B(h) (sum_k c_k D_k + c_p (x0~ - x0_cur)),
                            c = R_p^{-1} b_p (c = 1/2 for p = 1).
    The corrector raises the order of accuracy by one; as in the paper it is skipped on the last step
    (it would cost an extra evaluation). x0-hat at grid[0] is evaluated in `init`.
    NFE: N (1 in `init`, then one corrector evaluation on each of the first N - 1 steps), also with a
    final step to sigma = 0 (which is the first-order limit z' = alpha' x0_cur, never corrected).
    """

    needs_alpha = True  # logSNR coordinates (see Sampler.needs_alpha)

    name: ClassVar[str] = "unipc"
    order: int = 3
    variant: str = "bh2"
    lower_order_final: str = "auto"

    def validate(self, schedule: Schedule, num_steps: int) -> None:
        super().validate(schedule, num_steps)
        validate_multistep(self.name, self.order, 3, num_steps, self.lower_order_final)
        if self.variant not in UNIPC_VARIANTS:
            raise ValueError(
                f"{self.name}: unknown `variant` {self.variant!r}; valid: {list(UNIPC_VARIANTS)}"
            )

    def init_aux(self, ev, z, grid) -> History:
        t0 = grid[0]
        hist = history_init(self.order, z, grid.dtype)
        return history_push(hist, ev.x0(z, t0), half_lambda(ev.schedule, t0))

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        z, (hist, hist_lam) = carry.z, carry.aux
        x0 = hist[0]
        lam = hist_lam[0]
        order_i = multistep_order(self.order, i, num_steps, self.lower_order_final)
        last = i == num_steps - 1

        def full(_):
            h = half_lambda(s, t_next) - lam
            an = s.alpha(t_next)
            first = (s.sigma(t_next) / s.sigma(t_cur)) * z - an * jnp.expm1(-h) * x0

            def parts(p):
                rks = jnp.stack([(hist_lam[k] - lam) / h for k in range(1, p)] + [jnp.ones_like(h)])
                r_mat, b, b_h, _ = _unipc_rb(rks, h, self.variant, p)
                d1s = [(hist[k] - x0) / rks[k - 1] for k in range(1, p)]
                return r_mat, b, b_h, d1s

            def predictor(p):
                def f(_):
                    if p == 1:
                        return first
                    r_mat, b, b_h, d1s = parts(p)
                    rho = jnp.array([0.5], h.dtype) if p == 2 else jnp.linalg.solve(r_mat[:-1, :-1], b[:-1])
                    return first - an * b_h * sum(rho[k] * d1s[k] for k in range(p - 1))

                return f

            z_pred = jax.lax.switch(order_i - 1, [predictor(p) for p in range(1, self.order + 1)], None)

            def corrector(p):
                def f(x0_new):
                    r_mat, b, b_h, d1s = parts(p)
                    rho = jnp.array([0.5], h.dtype) if p == 1 else jnp.linalg.solve(r_mat, b)
                    res = sum((rho[k] * d1s[k] for k in range(p - 1)), jnp.zeros_like(z))
                    return first - an * b_h * (res + rho[p - 1] * (x0_new - x0))

                return f

            def correct(_):
                x0_new = ev.x0(z_pred, t_next)
                z_c = jax.lax.switch(order_i - 1, [corrector(p) for p in range(1, self.order + 1)], x0_new)
                return z_c, x0_new

            def keep(_):
                return z_pred, jnp.zeros_like(z)

            return ev.cond(last, keep, correct, None)

        def to_zero(_):
            return s.alpha(t_next) * x0, jnp.zeros_like(z)

        z_next, x0_new = ev.cond(is_zero_sigma(s, t_next), to_zero, full, None)
        # The new evaluation becomes the most recent history entry (unused after the last step).
        return z_next, history_push(carry.aux, x0_new, half_lambda(s, t_next))

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return num_steps


@dataclasses.dataclass(frozen=True)
class UniPCBH1(UniPC):
    """UniPC with B(h) = h (Zhao et al. 2023; the variant recommended for unconditional sampling)."""

    name: ClassVar[str] = "unipc_bh1"
    variant: str = "bh1"


@dataclasses.dataclass(frozen=True)
class UniPCBH2(UniPC):
    """UniPC with B(h) = e^h - 1 (Zhao et al. 2023; recommended with guidance)."""

    name: ClassVar[str] = "unipc_bh2"
    variant: str = "bh2"


# -------------------------------------------------------------------------------------------------
# iPNDM
# -------------------------------------------------------------------------------------------------

# Adams-Bashforth coefficients for equal steps (most recent first), orders 1..4.
_AB = (
    (1.0,),
    (3.0 / 2.0, -1.0 / 2.0),
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
)


@dataclasses.dataclass(frozen=True)
class IPNDM(EpsHistorySampler):
    """iPNDM, the improved pseudo-numerical method of Zhang & Chen 2023 ("Fast Sampling of Diffusion
    Models with Exponential Integrator", DEIS, sec. 5 / appendix): PNDM's linear multistep update
    (Liu et al. 2022, "PNDM") on the ODE dy/drho = eps-hat(y, rho) in y = z / alpha, rho = sigma / alpha,
    with the Runge-Kutta warm-up replaced by lower-order multistep steps:
        y' = y + (rho' - rho) sum_j c_j eps_{-j},   c = Adams-Bashforth coefficients of order
             min(order, i + 1) for equal steps: (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24.
    The equal-step coefficients are used on any grid, as in the paper, so the method is order 4 only
    on grids with equal sigma~ steps: on a Karras grid it is second order (measured 2.1 in
    tests/test_samplers_order.py); `ipndm_v` (lms.py) uses the variable-step coefficients and keeps
    order 4. order <= 4 (default 4).
    NFE: N. The step to sigma = 0 is regular here (rho = 0).
    """

    name: ClassVar[str] = "ipndm"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        z = carry.z
        a_c, a_n = s.alpha(t_cur), s.alpha(t_next)
        eps = ev.eps(z, t_cur)
        aux = history_push(carry.aux, eps, s.sigma(t_cur) / a_c)
        hist = aux.values
        order_i = jnp.minimum(self.order, i + 1).astype(jnp.int32)

        def combo(k):
            return lambda _: sum(c * hist[j] for j, c in enumerate(_AB[k - 1]))

        d = jax.lax.switch(order_i - 1, [combo(k) for k in range(1, self.order + 1)], None)
        drho = s.sigma(t_next) / a_n - s.sigma(t_cur) / a_c
        z_next = a_n * (z / a_c + drho * d)
        return z_next, aux

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return num_steps


__all__ = [
    "IPNDM",
    "LOWER_ORDER_FINAL",
    "UNIPC_VARIANTS",
    "DPMSolverPP2M",
    "DPMSolverPP2S",
    "DPMSolverPP3M",
    "DPMSolverPPMultistep",
    "UniPC",
    "UniPCBH1",
    "UniPCBH2",
]
