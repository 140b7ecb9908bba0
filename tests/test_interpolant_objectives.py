"""Interpolant objectives (CFM sigma, SB-CFM bridge + score head, presets) against closed forms.

For x1 ~ N(m1, S1), an independent standard normal source x0 and path noise c(t) eps, (x_t, u_t) is
jointly Gaussian, so the minimiser of the flow-matching loss (the marginal velocity E[u | x_t]) and
the minimum itself, E tr(Cov(u | x_t)), are known in closed form. The references use the paper
coefficients a = 1 - t, b = t, c = sigma or sigma sqrt(t (1 - t)) written here (Tong et al. 2024 eq. 14;
Tong et al. 2024b eq. 10-11), not the library's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from diffusion_jax import objectives as O

M1 = np.array([1.0, -0.5])
S1 = np.array([[0.6, 0.2], [0.2, 0.4]])


def _coeffs(noise, sig, t):
    """(a, b, c, a', b', c c') for the linear interpolant, from the papers."""
    c = sig * np.ones_like(t) if noise == "constant" else sig * np.sqrt(t * (1 - t))
    ccp = np.zeros_like(t) if noise == "constant" else sig**2 * (1 - 2 * t) / 2
    return 1 - t, t, c, -np.ones_like(t), np.ones_like(t), ccp


def _moments(noise, sig, t):
    a, b, c, da, db, ccp = _coeffs(noise, sig, t)
    eye = np.eye(2)
    cx = a[:, None, None] ** 2 * S1 + (b**2 + c**2)[:, None, None] * eye
    cux = (da * a)[:, None, None] * S1 + (db * b + ccp)[:, None, None] * eye
    dc2 = np.zeros_like(t) if noise == "constant" else sig**2 * (1 - 2 * t) ** 2 / (4 * t * (1 - t))
    cuu = da[:, None, None] ** 2 * S1 + (db**2 + dc2)[:, None, None] * eye
    return a[:, None] * M1, cx, da[:, None] * M1, cux, cuu


def _exact_nets(noise, sig, score_head):
    """The marginal velocity E[u | x_t] (and score -C_x^-1 (x - m)), times params['scale']."""

    def net(params, z, t, cond, rng):
        a, b, c, da, db = _jcoeffs(noise, sig, t)
        eye = jnp.eye(2)
        cx = a[:, None, None] ** 2 * S1 + (b**2 + c**2)[:, None, None] * eye
        ccp = (sig**2 * (1 - 2 * t) / 2) if noise == "bridge" else jnp.zeros_like(t)
        cux = (da * a)[:, None, None] * S1 + (db * b + ccp)[:, None, None] * eye
        r = z - a[:, None] * M1
        y = jnp.linalg.solve(cx, r[..., None])[..., 0]
        v = params["scale"] * (da[:, None] * M1 + jnp.einsum("bij,bj->bi", cux, y))
        if not score_head:
            return v
        return jnp.concatenate([v, -params["scale"] * y], axis=-1)

    return net


def _jcoeffs(noise, sig, t):
    c = sig * jnp.ones_like(t) if noise == "constant" else sig * jnp.sqrt(t * (1 - t))
    return 1 - t, t, c, -jnp.ones_like(t), jnp.ones_like(t)


@pytest.mark.parametrize("noise,sig,head", [("constant", 0.3, False), ("bridge", 0.8, True)])
def test_exact_marginal_fields_minimise_and_attain_the_closed_form(x64, noise, sig, head):
    cfg = O.objective_preset("rf_uniform")
    cfg.update(path_noise=noise, path_sigma=sig, score_head=head, t_eps=1e-3)
    loss_fn, den = O.make_loss(cfg, _exact_nets(noise, sig, head))
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.multivariate_normal(M1, S1, size=50_000))}
    key = jax.random.key(3)
    f = jax.jit(lambda s: loss_fn({"scale": s}, batch, key))
    loss, metrics = f(1.0)

    # Closed-form minimum: (1/D) E_t tr(C_uu - C_ux C_x^-1 C_xu) (+ score part), t ~ U(t_eps, 1 - t_eps);
    # the bridge's c'^2 term is ~ 1/t at the ends, hence quad (adaptive) rather than a fixed rule.
    def vmin(t):
        _, cx, _, cux, cuu = _moments(noise, sig, np.array([t]))
        return np.trace(cuu[0] - cux[0] @ np.linalg.inv(cx[0]) @ cux[0].T) / 2

    def smin(t):  # E||c s* + eps||^2 / D with s* = -C_x^-1 (x - m): tr(I - c^2 C_x^-1) / D
        _, cx, _, _, _ = _moments(noise, sig, np.array([t]))
        c = _coeffs(noise, sig, np.array([t]))[2][0]
        return np.trace(np.eye(2) - c**2 * np.linalg.inv(cx[0])) / 2

    lo, hi = 1e-3, 1 - 1e-3
    ref_v = quad(vmin, lo, hi, limit=200, points=[0.01, 0.99])[0] / (hi - lo)
    np.testing.assert_allclose(float(metrics["mse"]), ref_v, rtol=0.03)
    if head:
        ref_s = quad(smin, lo, hi, limit=200)[0] / (hi - lo)
        np.testing.assert_allclose(float(metrics["score_mse"]), ref_s, rtol=0.03)
        assert abs(float(loss) - (float(metrics["mse"]) + float(metrics["score_mse"]))) < 1e-12
    for s in (0.9, 1.1):  # same draws: the exact fields are the minimum
        assert float(f(s)[0]) > float(loss)
    # The sampling denoiser sees only the velocity head.
    z = batch["x"][:4]
    out = den.replace(params={"scale": 1.0}).velocity(z, jnp.full((4,), 0.5))
    assert out.shape == (4, 2)


def _log_sinkhorn(x, y, eps, iters):
    """Plain log-domain Sinkhorn in float64 numpy (the reference plan), uniform marginals."""
    from scipy.special import logsumexp

    n = len(x)
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    f, g, logw = np.zeros(n), np.zeros(n), np.full(n, -np.log(n))
    for _ in range(iters):
        f = -eps * logsumexp((g[None] - cost) / eps + logw[None], axis=1)
        g = -eps * logsumexp((f[:, None] - cost) / eps + logw[:, None], axis=0)
    return np.exp((f[:, None] + g[None] - cost) / eps + logw[:, None] + logw[None])


def test_sb_cfm_coupling_is_the_entropic_plan_with_reg_two_sigma_squared(x64):
    """coupling='schrodinger' uses the entropic plan with the absolute reg 2 sigma^2 (SB-CFM Prop. 3.1):
    against a log-domain Sinkhorn written here (numpy, 1500 iterations), and the loss runs with it."""
    sig, n = 0.5, 12
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 1.0
    eps = 2 * sig**2
    ref = _log_sinkhorn(x, y, eps, 1500)
    plan = O.sinkhorn_plan(jnp.asarray(x), jnp.asarray(y), eps, 2000, relative=False)
    # ott stops at its default threshold (marginal error 1e-3): entries agree to ~1% of the largest.
    np.testing.assert_allclose(np.asarray(plan), ref, atol=3e-4)
    assert np.abs(np.asarray(plan) - ref).sum() < 0.01
    cfg = O.objective_preset("sb_cfm")
    cfg.update(path_sigma=sig)
    loss_fn, _ = O.make_loss(cfg, lambda p, z, t, c, r: jnp.concatenate([z, z], axis=-1))
    _, m = loss_fn(None, {"x": jnp.asarray(x), "noise": jnp.asarray(y)}, jax.random.key(0))
    assert np.isfinite(float(m["loss"])) and float(m["score_mse"]) > 0


def test_sinkhorn_momentum_converges_sooner_to_the_same_plan():
    """The couplings' over-relaxation (momentum_start=20, Lehmann et al. 2021): in float32, the default
    dtype, on SB-CFM's slow regime (reg 2 on costs of mean ~250, as moons -> 8gaussians): capped at
    150 iterations the plain iterate has not met ott's marginal threshold (1e-3, L1) and the
    accelerated one has; run to convergence, both are the float64 reference plan (3000 iterations)
    to the same tolerance. A batch that converges within 20 iterations gets the plain plan bit for bit.
    Bad values name the field."""
    from diffusion_jax import couplings as C

    b = 64
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, 2)) * np.array([8.0, 5.0])
    ang = rng.integers(0, 8, b) * np.pi / 4
    y = 12 * np.stack([np.cos(ang), np.sin(ang)], 1) + rng.normal(size=(b, 2))
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    plan = jax.jit(C.sinkhorn_plan, static_argnums=(2, 3, 4, 5))
    col_err = lambda p: float(np.abs(np.asarray(p, np.float64).sum(0) - 1 / b).sum())  # noqa: E731
    assert col_err(plan(xj, yj, 2.0, 150, False, 0)) > 1e-3
    assert col_err(plan(xj, yj, 2.0, 150, False, 20)) < 1e-3
    ref = _log_sinkhorn(x, y, 2.0, 3000)
    for start in (0, 20):
        p = np.asarray(plan(xj, yj, 2.0, 2000, False, start), np.float64)
        assert np.abs(p - ref).sum() < 0.01, start
    fast_y = jnp.asarray(rng.normal(size=(b, 2)) + 1.0, jnp.float32)
    xs = jnp.asarray(rng.normal(size=(b, 2)), jnp.float32)
    np.testing.assert_array_equal(
        plan(xs, fast_y, 2.0, 1000, False, 0), plan(xs, fast_y, 2.0, 1000, False, 20)
    )
    for bad in (10, 25, -20, 2.5):
        with pytest.raises(
            ValueError, match=r"coupling_kwargs.momentum_start must be 0 .* multiple of 10 >= 20"
        ):
            C.SchrodingerOT(sigma=1.0, momentum_start=bad)
    with pytest.raises(ValueError, match="coupling_kwargs.momentum_start"):
        C.SinkhornOT(momentum_start=15)


@pytest.mark.parametrize(
    "override,match",
    [
        ({"path_sigma": -0.1, "path_noise": "constant"}, "path_sigma must be a finite number >= 0"),
        ({"path_sigma": 0.1}, "needs objective.path_noise='constant' or 'bridge'"),
        ({"path_noise": "brownian"}, r"path_noise='brownian' unknown; valid names"),
        ({"path_noise": "bridge", "path_sigma": 0.5, "prediction": "eps"}, "set prediction='velocity'"),
        ({"score_head": True}, "score_head needs path noise"),
        ({"coupling": "schrodinger"}, "needs path_noise='bridge' and path_sigma > 0"),
    ],
)
def test_bad_interpolant_config(override, match):
    cfg = O.objective_preset("rf_uniform")
    cfg.update(override)
    with pytest.raises(ValueError, match=match):
        O.resolve_objective(cfg)


@pytest.mark.parametrize("name", ["i_cfm", "ot_cfm", "sb_cfm", "si_linear", "vp_interpolant", "reflow"])
def test_presets_resolve(name):
    obj = O.resolve_objective(O.objective_preset(name))
    assert obj.prediction == "velocity"


@pytest.mark.parametrize("preset", ["vp_eps", "rf_uniform", "edm"])
def test_gaussian_path_loss_is_the_interpolant_loss_bitwise(preset):
    """make_loss on a Gaussian path equals the loss written with `interpolants` (standard normal
    source, c = 0) from the same keys, bit for bit (float32)."""
    from diffusion_jax import interpolants as I
    from diffusion_jax import predictions as P

    cfg = O.objective_preset(preset)
    obj = O.resolve_objective(cfg)

    def net(params, z, t, cond, rng):
        return jnp.tanh(z * params + t[:, None])

    loss_fn, den = O.make_loss(cfg, net)
    x = jax.random.normal(jax.random.key(5), (64, 2)) * 2.0 + 0.5
    key = jax.random.key(9)
    loss, _ = jax.jit(loss_fn)(jnp.float32(0.7), {"x": x}, key)

    def by_hand(params, x, key):
        k_t, k_eps, _, _, k_net = jax.random.split(key, 5)
        x0 = I.gaussian_source().sample(k_eps, x.shape, x.dtype)
        t = O.sample_time(obj, k_t, x.shape[0], x.dtype)
        interp = I.Interpolant(obj.schedule)
        z = interp.interpolate(x, x0, None, t)
        out = den.replace(params=params).raw(z, t, k_net)
        tgt = (
            interp.velocity(x, x0, None, t)
            if obj.prediction == "velocity"
            else P.target(obj.prediction, x, x0, t, obj.schedule)
        )
        return jnp.mean(jax.lax.stop_gradient(O.loss_weight(obj, t)) * jnp.mean((out - tgt) ** 2, axis=1))

    ref = jax.jit(by_hand)(jnp.float32(0.7), x, key)
    assert np.asarray(loss).tobytes() == np.asarray(ref).tobytes(), (loss, ref)


def test_switching_the_coupling_of_a_preset_is_one_field():
    """ot_cfm keeps epsilon=0.05 (the Sinkhorn default) in coupling_kwargs: switching to another
    coupling ignores it; a non-default kwarg the new coupling does not take is an error."""
    for coupling in ("ot_exact", "independent", "reflow"):
        cfg = O.objective_preset("ot_cfm")
        cfg.coupling = coupling
        assert O.resolve_objective(cfg).ckw == {}
    cfg = O.objective_preset("ot_cfm")
    cfg.update(coupling="schrodinger", path_noise="bridge", path_sigma=0.2)
    ckw = {"sigma": 0.2, "pairing": "sample", "max_iterations": 1000, "momentum_start": 20}
    assert O.resolve_objective(cfg).ckw == ckw
    cfg = O.objective_preset("ot_cfm")
    cfg.coupling_kwargs.epsilon = 0.1
    cfg.coupling = "ot_exact"
    with pytest.raises(ValueError, match=r"unknown kwarg\(s\) \['epsilon'\] for 'ot_exact'"):
        O.resolve_objective(cfg)
