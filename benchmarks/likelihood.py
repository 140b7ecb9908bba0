r"""Probability-flow likelihood at batch size: in-graph (batch-shared or per-sample step control) vs a
host-side scipy solve, at equal accuracy against the exact Gaussian-mixture log-density.

Problem: an 8-component 2-D Gaussian mixture (`analytic.random_gmm`, seed 0), VP-linear schedule, the
exact eps-denoiser, exact divergence and the exact marginal at t_max as prior (so the only error is
the ODE solve's), float64 throughout; reference `GaussianMixture.marginal(t_min).log_prob`.

Candidates (the same velocity and divergence function, jitted):
- `batch`: `likelihood.log_likelihood(..., step_control="batch")`: one Tsit5 solve of the whole batch
  on a shared grid, error norm = max over samples of the per-sample RMS;
- `per_sample`: the default, one vmapped adaptive solve per sample;
- `scipy`: `scipy.integrate.solve_ivp` (RK45, Dormand-Prince) stepping on the host over the batch
  stacked as one system, its right-hand side one jitted batched call per stage.

Equal accuracy: each candidate sweeps rtol = atol over a half-decade grid and runs at the loosest
tolerance whose max abs error over the batch is <= the target (1e-4 nats); the timed runs are
interleaved and their medians reported, with the ratio scipy / ours from the same run.

    .venv/bin/python -m benchmarks.likelihood
    .venv/bin/python -m benchmarks.likelihood --quick
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C

NAME = "likelihood"
METHODS = ("batch", "per_sample", "scipy")
TOLS = (1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8, 3e-9, 1e-9)


def problem(batch: int):
    """(denoiser, x [B, 2], prior_logp, exact log p_{t_min}(x) [B]) in float64."""
    from diffusion_jax import analytic
    from diffusion_jax import schedules as S

    dist = analytic.random_gmm(jax.random.key(0), 8, 2, dtype=jnp.float64)
    sch = S.VPLinear()
    x = dist.sample(jax.random.key(1), batch)
    prior = dist.marginal(sch, sch.t_max).log_prob
    ref = np.asarray(dist.marginal(sch, sch.t_min).log_prob(x))
    return dist.denoiser(sch, "eps"), x, prior, ref


def ingraph(den, prior, control: str, tol: float):
    """Jitted x -> (logp [B], nfe [B]) with `step_control=control`."""
    from diffusion_jax import likelihood as L

    def f(x):
        out = L.log_likelihood(den, x, rtol=tol, atol=tol, prior_logp=prior, step_control=control)
        return out.logp, out.nfe

    return jax.jit(f)


def scipy_solver(den, prior, x, tol: float):
    """x -> (logp [B], nfe [B]): scipy's RK45 on the stacked batch, jitted batched right-hand side."""
    import scipy.integrate

    b, d = x.shape
    sch = den.schedule

    def v(z, t):
        return den.velocity(z[None], jnp.asarray(t, z.dtype)[None])[0]

    @jax.jit
    def rhs(t, y):
        def one(z):
            vz, jvp = jax.linearize(lambda u: v(u, t), z)
            return jnp.concatenate([vz, jnp.trace(jax.vmap(jvp)(jnp.eye(d, dtype=z.dtype)))[None]])

        return jax.vmap(one)(y.reshape(b, d + 1)[:, :d]).reshape(-1)

    y0 = np.concatenate([np.asarray(x), np.zeros((b, 1))], 1).reshape(-1)
    rhs(0.5, y0)  # compile outside the timing

    def run():
        sol = scipy.integrate.solve_ivp(
            lambda t, y: np.asarray(rhs(t, y)), (sch.t_min, sch.t_max), y0, method="RK45", rtol=tol, atol=tol
        )
        y = sol.y[:, -1].reshape(b, d + 1)
        return np.asarray(prior(jnp.asarray(y[:, :d]))) + y[:, d], np.full(b, sol.nfev)

    return run


def field_costs(den, x, repeats: int) -> dict:
    """Median ms of one jitted evaluation, over the whole batch, of the velocity alone and of the
    velocity + exact divergence (the ODE's right-hand side): the unit both sides pay per NFE."""

    def v(zi, t):  # one sample through the denoiser's public batched API
        return den.velocity(zi[None], jnp.asarray(t, zi.dtype)[None])[0]

    d = x.shape[1]

    def rhs(z, t):
        def one(zi):
            vz, jvp = jax.linearize(lambda u: v(u, t), zi)
            return vz, jnp.trace(jax.vmap(jvp)(jnp.eye(d, dtype=zi.dtype)))

        return jax.vmap(one)(z)

    fns = {
        "velocity": jax.jit(lambda z, t: jax.vmap(lambda zi: v(zi, t))(z)),
        "velocity + divergence": jax.jit(rhs),
    }
    t = jnp.asarray(0.5, x.dtype)
    for f in fns.values():
        C.block(f(x, t))
    times = C.median_interleaved({k: (lambda f=f: f(x, t)) for k, f in fns.items()}, max(repeats, 20))
    return {k: 1e3 * v for k, v in times.items()}


def make_candidate(method: str, den, prior, x, tol: float):
    if method == "scipy":
        return scipy_solver(den, prior, x, tol)
    f = ingraph(den, prior, method, tol)
    return lambda: jax.tree.map(np.asarray, f(x))


def run(args) -> dict:
    with jax.enable_x64(True):
        den, x, prior, ref = problem(args.batch)
        chosen, sweep = {}, []
        for m in METHODS:
            for tol in args.tols:
                fn = make_candidate(m, den, prior, x, tol)
                t0 = time.perf_counter()
                logp, nfe = fn()
                err = float(np.max(np.abs(logp - ref)))
                sweep.append(
                    dict(
                        method=m,
                        tol=tol,
                        max_err=err,
                        nfe=float(np.mean(nfe)),
                        first_s=time.perf_counter() - t0,
                    )
                )
                if err <= args.target:
                    chosen[m] = (tol, err, float(np.mean(nfe)), fn)
                    break
            if m not in chosen:
                raise RuntimeError(f"{m}: no tolerance in {args.tols} reaches max error {args.target}")
        times = C.median_interleaved({m: c[3] for m, c in chosen.items()}, args.repeats)
        field_ms = field_costs(den, x, args.repeats)
    rows = [
        dict(
            method=m,
            tol=c[0],
            max_err=c[1],
            nfe=c[2],
            seconds=times[m],
            scipy_over_this=times["scipy"] / times[m],
        )
        for m, c in chosen.items()
    ]
    return {"batch": args.batch, "target": args.target, "rows": rows, "sweep": sweep, "field_ms": field_ms}


def report(res, args) -> list[str]:
    rows = [
        [
            r["method"],
            f"{r['tol']:.0e}",
            f"{r['max_err']:.1e}",
            f"{r['nfe']:.0f}",
            C.fmt_ms(r["seconds"]),
            f"{1e3 * r['seconds'] / r['nfe']:.3g}",
            C.fmt_ratio(r["scipy_over_this"]),
        ]
        for r in res["rows"]
    ]
    table = C.md_table(
        ["method", "rtol = atol", "max abs err (nats)", "NFE", "ms", "ms / NFE", "scipy / this"], rows
    )
    fm = res.get("field_ms", {})
    field = (
        "One evaluation of the right-hand side over the whole batch, jitted (what every NFE costs both "
        "sides): "
        + ", ".join(f"{k} {v:.3g} ms" for k, v in fm.items())
        + ". Ours can beat scipy by at most (scipy NFE x scipy ms/NFE) / (our NFE x one evaluation)."
    )
    return [
        f"Batch {res['batch']}, 2-D 8-component GMM, VP-linear, float64; each method at the loosest tolerance "
        f"reaching max error <= {res['target']:g} nats vs the exact log-density; medians of {args.repeats} "
        "interleaved runs.",
        table,
        field,
    ]


def parse_args(argv):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 64, target 1e-3, 2 repeats: a smoke test")
    p.add_argument("--out", default=C.RESULTS_DIR)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--target", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    args.tols = TOLS
    if args.quick:
        args.batch, args.target, args.repeats, args.tols = 64, 1e-3, 2, TOLS[:7]
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    return C.run_main(NAME, "Likelihood at batch size: in-graph vs host scipy", parse_args, run, report, argv)


if __name__ == "__main__":
    main()
