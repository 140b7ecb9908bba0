"""Variable-step linear multistep samplers in EDM's sigma~ coordinates: k-diffusion's LMS and
variable-step iPNDM.

Both integrate the probability-flow ODE dx~/dsigma~ = eps-hat (x~ = z / alpha, sigma~ = sigma /
alpha; Karras et al. 2022, eq. 4 with s = 1; Song et al. 2021 "DDIM", eq. 14) with the variable-step
Adams-Bashforth method (Hairer, Norsett & Wanner, "Solving ODEs I", III.5): the derivative is
replaced by the polynomial interpolating the last p derivatives d_j = eps-hat at sigma~_j (j = 0 the
current point) and integrated exactly over the step,

    x~' = x~ + sum_j c_j d_j,   c_j = int_{sigma~_cur}^{sigma~_next} L_j(s) ds,
    L_j(s) = prod_{k != j} (s - sigma~_k) / (sigma~_j - sigma~_k)     (Lagrange basis, degree p - 1).

The coefficients are computed in-graph: a 4-point Gauss-Legendre rule integrates the degree <= 3
basis exactly. p = min(order, i + 1) (warm-up from first order). Built only on the public contract of
`base` (Evaluator, History, multistep_order): this is what a sampler written outside the package
looks like.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers.base import EpsHistorySampler, history_push, multistep_order

Array = jax.Array

# 4-point Gauss-Legendre nodes / weights on [-1, 1]: exact for polynomials of degree <= 7.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(4)


def lagrange_integrals(points: Array, a: Array, b: Array) -> Array:
    """c [p]: c_j = int_a^b L_j(s) ds for the Lagrange basis on `points` [p] (distinct; p <= 8),
    by Gauss-Legendre quadrature (exact for these polynomials up to rounding)."""
    p = points.shape[0]
    half, mid = 0.5 * (b - a), 0.5 * (b + a)
    s = mid + half * jnp.asarray(_GL_X, points.dtype)  # [4]
    cols = []
    for j in range(p):
        basis = jnp.ones_like(s)
        for k in range(p):
            if k != j:
                basis = basis * (s - points[k]) / (points[j] - points[k])
        cols.append(half * jnp.sum(jnp.asarray(_GL_W, points.dtype) * basis))
    return jnp.stack(cols)


@dataclasses.dataclass(frozen=True)
class LMS(EpsHistorySampler):
    """Linear multistep (variable-step Adams-Bashforth) in sigma~, k-diffusion's `sample_lms`
    (Crowson, k-diffusion; Karras et al. 2022 eq. 4 coordinates; the method: Hairer et al.,
    "Solving ODEs I", III.1 eq. 1.5 with variable steps): see the module docstring. Order `order`
    (1..4, default 4) on any grid, after warm-up steps of orders 1, 2, ... k-diffusion integrates the
    Lagrange basis with `scipy.integrate.quad(epsrel=1e-4)`; here it is exact (Gauss-Legendre).
    NFE: N (one eps-hat per step at t_cur); a step to sigma = 0 is regular (sigma~ = 0).
    """

    name: ClassVar[str] = "lms"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        s = ev.schedule
        a_c, a_n = s.alpha(t_cur), s.alpha(t_next)
        st_c, st_n = s.sigma(t_cur) / a_c, s.sigma(t_next) / a_n
        hist = history_push(carry.aux, ev.eps(carry.z, t_cur), st_c)
        p_i = multistep_order(self.order, i, num_steps)

        def combo(p):
            def f(_):
                c = lagrange_integrals(hist.times[:p], st_c, st_n)
                return sum(c[j] * hist.values[j] for j in range(p))

            return f

        dx = jax.lax.switch(p_i - 1, [combo(p) for p in range(1, self.order + 1)], None)
        return a_n * (carry.z / a_c + dx), hist


@dataclasses.dataclass(frozen=True)
class IPNDMV(LMS):
    """Variable-step iPNDM: iPNDM (Zhang & Chen 2023, "DEIS", sec. 5; the `ipndm` sampler) with
    its equal-step Adams-Bashforth coefficients replaced by the variable-step ones of the actual grid
    (as proposed by Zhou et al. 2024, "Fast ODE-based sampling for diffusion models in around 5
    steps", for iPNDM on non-uniform grids). Those coefficients are the integrals of the Lagrange
    basis through the past sigma~'s, so the update is the same as `lms`' (variable-step
    Adams-Bashforth of order min(order, i + 1) on dx~/dsigma~ = eps-hat). `ipndm` with equal-step
    coefficients is only order 2 on a Karras grid (measured in tests/test_samplers_order.py); this
    one keeps order 4. NFE: N.
    """

    name: ClassVar[str] = "ipndm_v"


__all__ = ["IPNDMV", "LMS", "lagrange_integrals"]
