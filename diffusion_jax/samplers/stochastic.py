"""Stochastic samplers: reverse-SDE and ancestral solvers on the `base.Sampler` interface.

Every sampler here works on any `Denoiser` (any schedule, any prediction kind): it only asks for
(x0-hat, eps-hat) at (z, t) from one network call and uses the path coefficients alpha(t), sigma(t),
the logSNR lambda(t) = log(alpha^2 / sigma^2) and the forward SDE `schedule.sde(t)`.

Shared notation for a step from t (= t_cur) to s (= t_next < t):
  a_t, s_t = alpha(t), sigma(t);   r = exp(lambda_t - lambda_s) = (sigma~_s / sigma~_t)^2 in (0, 1),
  sigma~ = sigma / alpha (the alpha = 1 "rescaled" coordinates of EDM eq. 4 and k-diffusion),
  h = (lambda_s - lambda_t) / 2 > 0 (the half-logSNR step of DPM-Solver).
The DDPM posterior q(z_s | z_t, x) (Kingma et al. 2021, eq. 33-34) in this notation is
  mean = a_t s_s^2 / (a_s s_t^2) z_t + a_s (1 - r) x,   std = s_s sqrt(1 - r),
computed with expm1 so small steps keep their precision.

Conventions (documented once, shared by all samplers here):
  * No noise is added on the final step of the grid (Ho et al. 2020, Alg. 2 line 4: "z = 0 if t = 1";
    Song et al. 2021's "noise removal"): the last step returns the mean of its transition.
  * Randomness comes only from the per-step keys `fold_in(sample_key, step)` handed over by `run`;
    a sampler that needs several draws in one step splits that key by `fold_in(key, j)`.
  * Grids the sampler cannot handle raise ValueError in `check_grid` (every grid time where a step
    starts), before compiling; with a traced grid, `check_traced_grid` checks the schedule's t_max.
  * NFE: `nfe(N, final_zero)` (the `base.Sampler` interface; final_zero = the last grid time has
    sigma = 0) equals the count the run keeps in `Carry.nfe` (counted by `base.Evaluator`). Only EDM's sampler depends on it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax.predictions import bcast
from diffusion_jax.samplers.base import (
    LOWER_ORDER_FINAL,
    Carry,
    Sampler,
    multistep_order,
)
from diffusion_jax.samplers.stochastic_base import (
    AncestralNoiseSampler,
    StochasticSampler,
    _final_mask,
    _noise,
    _one_minus_r,
)

Array = jax.Array


# -------------------------------------------------------------------------------------------------
# Euler-Maruyama on the reverse SDE
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EulerMaruyama(StochasticSampler):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, "Score-Based Generative Modeling
    through SDEs", eq. 6):  dz = [f(t) z - g(t)^2 grad log p_t(z)] dt + g(t) dW_bar,  integrated
    backwards from t to s with dt = s - t < 0:
        z_s = z_t - (f z_t - g^2 score) (t - s) + g sqrt(t - s) * n,   score = -eps-hat / sigma_t,
    with f, g^2 from `schedule.sde(t)` (evaluated at t_cur). The last step adds no noise (Song et
    al.'s noise removal). NFE = N.
    """

    name: ClassVar[str] = "euler_maruyama"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z = carry.z
        _, eps = ev.x0_eps(z, t_cur)
        f, g2 = ev.schedule.sde(t_cur)
        score = -eps / ev.schedule.sigma(t_cur)
        dt = t_cur - t_next
        mean = z - (f * z - g2 * score) * dt
        n = _noise(keys, z)
        z = mean + _final_mask(i, num_steps, z.dtype) * jnp.sqrt(g2 * dt) * n
        return z, ()


# -------------------------------------------------------------------------------------------------
# DDPM ancestral / DDIM with eta > 0 / Euler ancestral
# -------------------------------------------------------------------------------------------------

VARIANCES = ("small", "large")


@dataclasses.dataclass(frozen=True)
class DDPMAncestral(StochasticSampler):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2), generalised to any path and any grid by
    sampling the posterior q(z_s | z_t, x = x0-hat) (Kingma et al. 2021, eq. 33-34):
        z_s = a_t s_s^2 / (a_s s_t^2) z_t + a_s (1 - r) x0-hat + std * n,
    with `variance="small"`: std = s_s sqrt(1 - r) (the posterior, Ho's sigma_t^2 = beta~_t) or
    `"large"`: std = s_t sqrt(1 - r) (the std of the forward transition q(z_t | z_s): Ho's
    sigma_t^2 = beta_t on VP paths, sigma_t^2 - sigma_s^2 on VE paths). On a 1000-step VPDiscrete grid with "large" this is exactly
    Alg. 2. No noise on the last step. Works at alpha(t_max) = 0 (needs only x0-hat). NFE = N.
    """

    name: ClassVar[str] = "ddpm"
    needs_alpha = False
    variance: str = "small"

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if self.variance not in VARIANCES:
            raise ValueError(f"{self.name}: unknown variance {self.variance!r}; valid: {list(VARIANCES)}")

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z = carry.z
        sch = ev.schedule
        x0, _ = ev.x0_eps(z, t_cur)
        a_t, s_t, a_s, s_s = sch.alpha(t_cur), sch.sigma(t_cur), sch.alpha(t_next), sch.sigma(t_next)
        omr = _one_minus_r(sch.logsnr(t_cur), sch.logsnr(t_next))
        mean = a_t * s_s**2 / (a_s * s_t**2) * z + a_s * omr * x0
        if self.variance == "small":
            std = s_s * jnp.sqrt(omr)
        else:
            std = s_t * jnp.sqrt(omr)  # sigma_{t|s}^2 = s_t^2 - (a_t/a_s)^2 s_s^2 = s_t^2 (1 - r)
        z = mean + _final_mask(i, num_steps, z.dtype) * std * _noise(keys, z)
        return z, ()


@dataclasses.dataclass(frozen=True)
class DDIMStochastic(StochasticSampler):
    """DDIM with eta > 0 (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12
    with sigma from eq. 16), on any path:
        sigma_eta = eta * s_s sqrt(1 - r)       (eq. 16: eta * posterior std),
        z_s = a_s x0-hat + sqrt(s_s^2 - sigma_eta^2) eps-hat + sigma_eta * n.
    eta = 1 is the DDPM posterior ("small" variance) sampler, eta = 0 deterministic DDIM. Requires
    0 <= eta <= 1. No noise on the last step. NFE = N.
    """

    name: ClassVar[str] = "ddim_eta"
    needs_alpha = False
    eta: float = 1.0

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"{self.name}: eta must be in [0, 1], got {self.eta}")

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z = carry.z
        sch = ev.schedule
        x0, eps = ev.x0_eps(z, t_cur)
        a_s, s_s = sch.alpha(t_next), sch.sigma(t_next)
        omr = _one_minus_r(sch.logsnr(t_cur), sch.logsnr(t_next))
        sig_eta = self.eta * s_s * jnp.sqrt(omr)
        # s_s^2 - sigma_eta^2 = s_s^2 (1 - eta^2 (1 - r)) >= 0 for eta <= 1.
        c_eps = s_s * jnp.sqrt(1.0 - self.eta**2 * omr)
        z = a_s * x0 + c_eps * eps + _final_mask(i, num_steps, z.dtype) * sig_eta * _noise(keys, z)
        return z, ()


@dataclasses.dataclass(frozen=True)
class EulerAncestral(AncestralNoiseSampler):
    """Euler ancestral in sigma~ = sigma/alpha coordinates, x~ = z/alpha (the k-diffusion
    `sample_euler_ancestral` scheme; Karras et al. 2022, eq. 4 for the coordinates):
        sigma_up = min(sigma~_s, eta * sigma~_s sqrt(1 - sigma~_s^2 / sigma~_t^2)),
        sigma_down = sqrt(sigma~_s^2 - sigma_up^2),
        x~_s = x~_t + (sigma_down - sigma~_t) (x~_t - x0-hat) / sigma~_t + s_noise * sigma_up * n,
    then z_s = a_s x~_s. With eta = 1 this is the DDPM posterior step. No noise on the last step.
    NFE = N.
    """

    name: ClassVar[str] = "euler_ancestral"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z = carry.z
        sch = ev.schedule
        x0, _ = ev.x0_eps(z, t_cur)
        a_t, a_s = sch.alpha(t_cur), sch.alpha(t_next)
        st_t, st_s = sch.sigma(t_cur) / a_t, sch.sigma(t_next) / a_s
        omr = _one_minus_r(sch.logsnr(t_cur), sch.logsnr(t_next))
        sig_up = jnp.minimum(st_s, self.eta * st_s * jnp.sqrt(omr))
        sig_down = jnp.sqrt(jnp.maximum(st_s**2 - sig_up**2, 0.0))
        xt = z / a_t
        d = (xt - x0) / st_t
        xs = xt + (sig_down - st_t) * d
        xs = xs + _final_mask(i, num_steps, z.dtype) * self.s_noise * sig_up * _noise(keys, z)
        return a_s * xs, ()


# -------------------------------------------------------------------------------------------------
# EDM stochastic sampler
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EDMStochastic(StochasticSampler):
    """EDM stochastic sampler (Karras et al. 2022, "Elucidating the Design Space", Alg. 2), in the
    sigma~ = sigma/alpha, x~ = z/alpha coordinates (eq. 4) so it runs on any path:
        gamma = min(S_churn / N, sqrt(2) - 1) if S_min <= sigma~_t <= S_max else 0
        sigma^ = sigma~_t (1 + gamma);  x^ = x~_t + sqrt(sigma^^2 - sigma~_t^2) S_noise n
        d = (x^ - D(x^; sigma^)) / sigma^;  x~_s = x^ + (sigma~_s - sigma^) d
        if sigma~_s != 0:  d' = (x~_s - D(x~_s; sigma~_s)) / sigma~_s,
                            x~_s = x^ + (sigma~_s - sigma^) (d + d') / 2
    where D(x; sigma) is x0-hat at the time t^ with sigma~(t^) = sigma^ (`schedule.t_from_logsnr`,
    queried with z = alpha(t^) x). S_min / S_max are in sigma~ units. The final step to sigma = 0 is
    Euler (Alg. 2 line 9, "if sigma_{i+1} != 0"), so `nfe(N, final_zero)` = 2N - 1 when the grid
    ends at sigma = 0 (the paper's grid: 35 NFE for N = 18) and 2N when it ends at t_min > 0.
    """

    name: ClassVar[str] = "edm_stochastic"
    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = float("inf")
    s_noise: float = 1.0

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if self.s_churn < 0 or self.s_noise < 0:
            raise ValueError(
                f"{self.name}: s_churn and s_noise must be >= 0, got {self.s_churn}, {self.s_noise}"
            )
        if self.s_min > self.s_max:
            raise ValueError(f"{self.name}: s_min ({self.s_min}) must be <= s_max ({self.s_max})")

    def nfe(self, num_steps, final_zero=False):
        return 2 * num_steps - (1 if final_zero else 0)

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z = carry.z
        sch = ev.schedule
        a_t, a_s = sch.alpha(t_cur), sch.alpha(t_next)
        st_t, st_s = sch.sigma(t_cur) / a_t, sch.sigma(t_next) / a_s
        gamma = jnp.where(
            (st_t >= self.s_min) & (st_t <= self.s_max),
            min(self.s_churn / num_steps, math.sqrt(2.0) - 1),
            0.0,
        )
        st_hat = st_t * (1.0 + gamma)
        # Query time with sigma~ = sigma^; t_cur exactly when no churn (no inverse-logSNR error).
        t_hat = jnp.where(gamma > 0, sch.t_from_logsnr(-2.0 * jnp.log(st_hat)), t_cur).astype(t_cur.dtype)
        a_hat = sch.alpha(t_hat)
        # sqrt(sigma^^2 - sigma~_t^2) written so it cannot round to sqrt(negative) when gamma = 0.
        x_hat = z / a_t + st_t * jnp.sqrt(gamma * (2.0 + gamma)) * self.s_noise * _noise(keys, z)

        def x0_of(x, t, a):
            return ev.x0(a * x, t)

        d = (x_hat - x0_of(x_hat, t_hat, a_hat)) / st_hat
        x_next = x_hat + (st_s - st_hat) * d

        def heun(x_next):
            d2 = (x_next - x0_of(x_next, t_next, a_s)) / st_s
            return x_hat + (st_s - st_hat) * 0.5 * (d + d2)

        # The grid time is shared by the whole batch, so this is a real branch (no wasted NFE).
        x_next = ev.cond(st_s > 0, heun, lambda x: x, x_next)
        return a_s * x_next, ()


# -------------------------------------------------------------------------------------------------
# DPM-Solver++ 2M / 3M SDE
# -------------------------------------------------------------------------------------------------

SOLVER_TYPES = ("midpoint", "heun")


def _phi(k: float, h: Array) -> tuple[Array, Array, Array]:
    """Integrals of the exponential integrator with rate k over a step h (u = lambda' - lambda_t):
    I0 = int_0^h k e^{-k(h-u)} du = 1 - e^{-kh},  I1 = int ... u du = h - I0 / k,
    I2 = int ... u^2 du = h^2 - 2h / k + 2 I0 / k^2."""
    i0 = -jnp.expm1(-k * h)
    i1 = h - i0 / k
    i2 = h**2 - 2.0 * h / k + 2.0 * i0 / k**2
    # Small kh: the closed forms cancel (I2 ~ k h^3 / 3 from terms ~ h); use the series
    # I_n = k n! h^{n+1} sum_m (-kh)^m / (n+m+1)!, 12 terms (relative error < 1e-15 for kh < 0.5).
    x = -k * h
    # float(...): 13! and 14! overflow int32, the weak-typed Python int of a float32 run.
    s1 = sum(x**m / float(math.factorial(m + 2)) for m in range(12))
    s2 = sum(x**m / float(math.factorial(m + 3)) for m in range(12))
    small = k * h < 0.5
    i1 = jnp.where(small, k * h**2 * s1, i1)
    i2 = jnp.where(small, 2.0 * k * h**3 * s2, i2)
    return i0, i1, i2


@dataclasses.dataclass(frozen=True)
class _DPMppSDE(StochasticSampler):
    """Shared implementation of the DPM-Solver++ SDE multistep solvers (see subclasses).

    Order of step i (0-based, N steps), as for the ODE multistep solvers (`multistep.py`):
    min(order, i + 1) (warm-up), further capped at N - i on the last steps when `lower_order_final`
    is active: "auto" (default) for N < 15 (the DPM-Solver++ reference rule, Lu et al. 2022b; diffusers
    applies it to its `sde-dpmsolver++` variant too), "always", or "never".
    """

    multistep: ClassVar[bool] = True
    order: ClassVar[int] = 2
    eta: float = 1.0
    s_noise: float = 1.0
    lower_order_final: str = "auto"

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"{self.name}: eta must be in [0, 1], got {self.eta}")
        if self.s_noise < 0:
            raise ValueError(f"{self.name}: s_noise must be >= 0, got {self.s_noise}")
        if self.lower_order_final not in LOWER_ORDER_FINAL:
            raise ValueError(
                f"{self.name}: unknown `lower_order_final` {self.lower_order_final!r}; "
                f"valid: {list(LOWER_ORDER_FINAL)}"
            )

    def init_aux(self, ev, z, grid):
        """The last two x0-hat's (x1, x2) and half-logSNR steps (h1, h2), most recent first."""
        zero = jnp.zeros((), grid.dtype)
        return {"x1": jnp.zeros_like(z), "x2": jnp.zeros_like(z), "h1": zero, "h2": zero}

    def _correction(self, carry, x0, h, order_i, phis) -> Array:
        """a_s-free higher-order term C of a step of order `order_i` (traced int32; C = 0 at order 1)."""
        raise NotImplementedError

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z = carry.z
        sch = ev.schedule
        x0, _ = ev.x0_eps(z, t_cur)
        s_t, a_s, s_s = sch.sigma(t_cur), sch.alpha(t_next), sch.sigma(t_next)
        lam_t, lam_s = sch.logsnr(t_cur), sch.logsnr(t_next)
        final_zero = s_s == 0
        # Clamp h where sigma_s = 0 (lambda_s = inf); that step returns a_s x0-hat instead.
        h = jnp.where(final_zero, 1.0, 0.5 * (lam_s - lam_t))
        k = 1.0 + self.eta
        phis = _phi(k, h)
        order_i = multistep_order(self.order, i, num_steps, self.lower_order_final)
        # First-order SDE-DPM-Solver++ (exact for constant x0-hat): noise fraction eta.
        z_new = (s_s / s_t) * jnp.exp(-self.eta * h) * z + a_s * (
            phis[0] * x0 + self._correction(carry.aux, x0, h, order_i, phis)
        )
        std = s_s * jnp.sqrt(-jnp.expm1(-2.0 * self.eta * h)) * self.s_noise
        z_new = z_new + _final_mask(i, num_steps, z.dtype) * std * _noise(keys, z)
        z_new = jnp.where(final_zero, a_s * x0, z_new)
        return z_new, {"x1": x0, "x2": carry.aux["x1"], "h1": h, "h2": carry.aux["h1"]}


@dataclasses.dataclass(frozen=True)
class DPMpp2MSDE(_DPMppSDE):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, "DPM-Solver++", the SDE variant of the second-order
    multistep data-prediction solver; exponential-integrator SDE derivation as in Gonzalez et al.
    2023, "SEEDS"). With lambda/2 steps h, rate k = 1 + eta:
        z_s = (s_s / s_t) e^{-eta h} z_t + a_s [I0 x0_t + C] + s_s sqrt(1 - e^{-2 eta h}) n,
    with x0-hat linear in lambda through the previous step (slope D = (x0_t - x0_prev) / h_prev):
    `solver_type="heun"` uses the exact integral C = I1 D, `"midpoint"` (k-diffusion's default) uses
    C = (I0 / 2) h D. The first step is first order (C = 0), and so is the last one when
    `lower_order_final` is active (see `_DPMppSDE`). The step to sigma = 0 returns a_s x0-hat
    (DPM-Solver++'s final denoising step); no noise on the last step. NFE = N. With eta = 0 and
    "midpoint" this is exactly the ODE DPM-Solver++(2M) (Alg. 2).
    """

    name: ClassVar[str] = "dpmpp_2m_sde"
    solver_type: str = "midpoint"

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if self.solver_type not in SOLVER_TYPES:
            raise ValueError(
                f"{self.name}: unknown solver_type {self.solver_type!r}; valid: {list(SOLVER_TYPES)}"
            )

    def _correction(self, carry, x0, h, order_i, phis):
        i0, i1, _ = phis
        # order_i >= 2 implies i >= 1 (a previous point exists); the clamps keep unused lanes finite.
        h1 = jnp.where(order_i >= 2, carry["h1"], 1.0)
        slope = (x0 - carry["x1"]) / h1
        c = i1 * slope if self.solver_type == "heun" else 0.5 * i0 * h * slope
        return jnp.where(order_i >= 2, c, 0.0)


@dataclasses.dataclass(frozen=True)
class DPMpp3MSDE(_DPMppSDE):
    """DPM-Solver++(3M) SDE: the third-order multistep version of `DPMpp2MSDE` (Lu et al. 2022b
    multistep data prediction; SDE exponential integrator as in Gonzalez et al. 2023). x0-hat is the
    quadratic in lambda through the last three points (Newton form at u = 0, -h1, -h1-h2):
        P(u) = x0_t + b u + c u^2,  c = (f01 - f12) / (h1 + h2),  b = f01 + c h1,
        f01 = (x0_t - x0_1) / h1, f12 = (x0_1 - x0_2) / h2,
    and integrated exactly: C = I1 b + I2 c. Steps 1 and 2 use orders 1 and 2; with
    `lower_order_final` active the last two use orders 2 and 1 (see `_DPMppSDE`). An order-2 step
    integrates the line through the last two points exactly, C = I1 f01 (the "heun" form of
    `DPMpp2MSDE`; the ODE DPM-Solver++(3M) uses Alg. 2's midpoint form there instead). NFE = N.
    """

    name: ClassVar[str] = "dpmpp_3m_sde"
    order: ClassVar[int] = 3

    def _correction(self, carry, x0, h, order_i, phis):
        _, i1, i2 = phis
        # order_i >= k implies i >= k - 1 (k points exist); the clamps keep unused lanes finite.
        h1 = jnp.where(order_i >= 2, carry["h1"], 1.0)
        h2 = jnp.where(order_i >= 3, carry["h2"], 1.0)
        f01 = (x0 - carry["x1"]) / h1
        f12 = (carry["x1"] - carry["x2"]) / h2
        c = (f01 - f12) / (h1 + h2)
        third = i1 * (f01 + c * h1) + i2 * c
        second = i1 * f01
        return jnp.where(order_i >= 3, third, jnp.where(order_i >= 2, second, 0.0))


# -------------------------------------------------------------------------------------------------
# Predictor-corrector
# -------------------------------------------------------------------------------------------------

PREDICTORS = ("euler_maruyama", "ddpm")


@dataclasses.dataclass(frozen=True)
class PredictorCorrector(StochasticSampler):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-5): at every grid time t_cur,
    `n_corrector` Langevin corrector steps (Alg. 4/5)
        g = score(z, t),  eps_l = 2 (snr ||n|| / ||g||)^2,  z <- z + eps_l g + sqrt(2 eps_l) n',
    then one predictor step t_cur -> t_next (`predictor`: "euler_maruyama" = reverse-SDE Euler, or
    "ddpm" = ancestral / reverse-diffusion). This is the order of the score_sde code (corrector, then
    predictor), so the final time, where sigma may be 0, is never corrected. Norms are per sample
    (the reference code averages them over the batch, which would make sample i depend on the
    batch); Alg. 5's alpha_i = 1 - beta_i ~ 1 factor is taken as 1. NFE = N (1 + n_corrector).
    """

    name: ClassVar[str] = "pc"
    predictor: str = "euler_maruyama"
    n_corrector: int = 1
    snr: float = 0.16

    def _pred(self) -> Sampler:
        return EulerMaruyama() if self.predictor == "euler_maruyama" else DDPMAncestral()

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if self.predictor not in PREDICTORS:
            raise ValueError(f"{self.name}: unknown predictor {self.predictor!r}; valid: {list(PREDICTORS)}")
        if self.n_corrector < 0 or self.snr <= 0:
            raise ValueError(
                f"{self.name}: need n_corrector >= 0 and snr > 0, got {self.n_corrector}, {self.snr}"
            )

    def nfe(self, num_steps, final_zero=False):
        return num_steps * (1 + self.n_corrector)

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z = carry.z
        red = tuple(range(1, z.ndim))
        sigma = ev.schedule.sigma(t_cur)

        def corrector(j, z):
            score = -ev.eps(z, t_cur) / sigma
            n = _noise(keys, z, tag=1 + j)
            g_norm = jnp.sqrt(jnp.sum(score**2, axis=red))
            n_norm = jnp.sqrt(jnp.sum(n**2, axis=red))
            step = bcast(2.0 * (self.snr * n_norm / g_norm) ** 2, z)
            return z + step * score + jnp.sqrt(2.0 * step) * n

        z = ev.fori_loop(0, self.n_corrector, corrector, z)
        pk = None if keys is None else jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        return self._pred().update(ev, carry.replace(z=z), t_cur, t_next, i, pk, num_steps)


# -------------------------------------------------------------------------------------------------
# Listing (explicit dict; registry.py collects it)
# -------------------------------------------------------------------------------------------------

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        EulerMaruyama,
        DDPMAncestral,
        DDIMStochastic,
        EulerAncestral,
        EDMStochastic,
        DPMpp2MSDE,
        DPMpp3MSDE,
        PredictorCorrector,
    )
}

__all__ = [
    "SAMPLERS",
    "StochasticSampler",
    "EulerMaruyama",
    "DDPMAncestral",
    "DDIMStochastic",
    "EulerAncestral",
    "EDMStochastic",
    "DPMpp2MSDE",
    "DPMpp3MSDE",
    "PredictorCorrector",
    "Carry",
]
