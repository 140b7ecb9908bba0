"""Objectives: the exact denoiser minimises every preset loss, loss values match closed-form
quadratures, Kingma & Gao weighting equivalences, time-distribution densities (KS), OT couplings,
label dropout and config validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from diffusion_jax import analytic as A
from diffusion_jax import objectives as O
from diffusion_jax import predictions as P
from diffusion_jax import schedules as S


def _cfg(**kw):
    c = O.default_objective_config()
    c.update(kw)
    return c


def _ideal_edm_net(sigma_data):
    """EDM's ideal raw network F (eq. 7): D = c_skip z~ + c_out F is the exact posterior mean."""
    ve_path = S.EDM(sigma_min=1e-6, sigma_max=1.0)

    def net_fn(params, z_in, t_in, cond, rng):
        sigma = jnp.exp(4.0 * t_in)
        c_skip, c_out, c_in, _ = P.edm_coefficients(sigma, sigma_data)
        zt = z_in / c_in[:, None]
        return (params.x0(zt, sigma, ve_path) - c_skip[:, None] * zt) / c_out[:, None]

    return net_fn


def _exact_net(obj):
    if obj.preconditioning == "edm":
        return _ideal_edm_net(obj.sigma_data)
    assert obj.time_input == "t" and obj.input_scaling == "none"
    return A.ExactNet(obj.schedule, obj.prediction)


# -------------------------------------------------------------------------------------------------
# The exact denoiser is the minimiser
# -------------------------------------------------------------------------------------------------

PERTURBATIONS = {
    "scale": lambda f: lambda p, z, t, c, r: 1.2 * f(p, z, t, c, r),
    "offset": lambda f: lambda p, z, t, c, r: f(p, z, t, c, r) + 0.2,
    "time": lambda f: lambda p, z, t, c, r: f(p, z, 0.8 * t, c, r),
}


@pytest.mark.parametrize("preset", ["vp_eps", "vp_v_cosine", "edm", "rf_logit_normal"])
def test_exact_denoiser_minimises_the_loss(x64, preset):
    cfg = O.objective_preset(preset)
    obj = O.resolve_objective(cfg)
    g = A.gmm_2d_ring(8, radius=1.0, std=0.2)
    wrong = A.gmm_2d_ring(8, radius=1.1, std=0.25)
    batch = {"x": g.sample(jax.random.key(0), 4096)}
    key = jax.random.key(1)
    net = _exact_net(obj)

    @jax.jit
    def all_losses(g, wrong, batch, key):
        out = {"exact": O.make_loss(cfg, net)[0](g, batch, key)[0]}
        out["wrong_distribution"] = O.make_loss(cfg, net)[0](wrong, batch, key)[0]
        for name, perturb in PERTURBATIONS.items():
            out[name] = O.make_loss(cfg, perturb(net))[0](g, batch, key)[0]
        return out

    losses = {k: float(v) for k, v in all_losses(g, wrong, batch, key).items()}
    for name, val in losses.items():
        if name != "exact":
            assert val > losses["exact"] * (1 + 1e-3), (preset, losses)


# -------------------------------------------------------------------------------------------------
# Loss values against closed-form quadratures (Gaussian data: the optimal error is known)
# -------------------------------------------------------------------------------------------------

EIG = np.array([0.25, 1.5])  # data covariance eigenvalues


def _gaussian():
    rot = np.array([[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]])
    return A.Gaussian(jnp.asarray([0.7, -0.3]), jnp.asarray(rot @ np.diag(EIG) @ rot.T))


def _mmse_eps(lam):
    """Per-dimension E||eps - E[eps|z]||^2 / D for Gaussian data: mean_i l_i / (l_i + e^-lambda)."""
    return np.mean(EIG / (EIG + np.exp(-lam)))


def _quad_t(f, a, b):
    return integrate.quad(f, a, b, limit=200, epsabs=1e-10)[0]


def _expected(preset_or_cfg):
    """Closed-form expectation of the loss of the exact denoiser, written from the papers' formulas."""
    name = preset_or_cfg
    if name == "vp_eps":  # W = 1 on uniform t in [1e-3, 1 - 1e-3]
        sch, te = S.VPLinear(), 1e-3
        return _quad_t(lambda t: _mmse_eps(float(sch.logsnr(t))), te, 1 - te) / (1 - 2 * te)
    if name == "vp_v_cosine":  # v-MSE: W = 1/alpha^2
        sch, te = S.VPCosine(), 1e-3
        return _quad_t(lambda t: _mmse_eps(float(sch.logsnr(t))) / float(sch.alpha(t)) ** 2, te, 1 - te) / (
            1 - 2 * te
        )
    if name == "rf_uniform":  # velocity MSE: W = 1/(1-t)^2
        te = 1e-5
        return _quad_t(lambda t: _mmse_eps(2 * np.log((1 - t) / t)) / (1 - t) ** 2, te, 1 - te) / (1 - 2 * te)
    if name == "edm":  # E_{ln sigma ~ N(-1.2, 1.2^2)} [(1 + sigma^2 / sd^2) mmse]
        f = lambda u: stats.norm.pdf(u, -1.2, 1.2) * (1 + np.exp(2 * u) / 0.25) * _mmse_eps(-2 * u)
        return _quad_t(f, -12, 8)
    if name == "elbo_logsnr":  # 1/2 int_{-10}^{10} mmse(lambda) d lambda: schedule-independent
        return 0.5 * _quad_t(_mmse_eps, -10, 10)
    raise KeyError(name)


CASES = {
    "vp_eps": O.objective_preset("vp_eps"),
    "vp_v_cosine": O.objective_preset("vp_v_cosine"),
    "rf_uniform": O.objective_preset("rf_uniform"),
    "edm": O.objective_preset("edm"),
    "elbo_logsnr_rf": _cfg(weighting="elbo", time_distribution="logsnr_uniform"),
    "elbo_logsnr_cosine": _cfg(
        schedule="vp_cosine", prediction="eps", weighting="elbo", time_distribution="logsnr_uniform"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_of_exact_denoiser_matches_quadrature(x64, case):
    cfg = CASES[case]
    obj = O.resolve_objective(cfg)
    g = _gaussian()
    loss_fn, _ = O.make_loss(cfg, _exact_net(obj))
    nb, b = 16, 1024
    xs = g.sample(jax.random.key(2), nb * b).reshape(nb, b, 2)
    keys = jax.random.split(jax.random.key(3), nb)
    vals = np.asarray(jax.jit(jax.vmap(lambda x, k: loss_fn(g, {"x": x}, k)[0]))(xs, keys))
    mc, se = vals.mean(), vals.std(ddof=1) / np.sqrt(nb)
    ref = _expected("elbo_logsnr" if case.startswith("elbo") else case)
    assert abs(mc - ref) < 4 * se + 1e-4 * ref, (case, mc, se, ref)


# -------------------------------------------------------------------------------------------------
# Kingma & Gao equivalences
# -------------------------------------------------------------------------------------------------

T = np.linspace(0.01, 0.99, 99)  # float64 numpy: becomes a float64 jax array under the x64 fixture


def test_rectified_flow_fm_is_the_exp_minus_half_lambda_weighting(x64):
    """Kingma & Gao App. D (weightings of previous work): flow matching with the OT path, uniform t, has
    w(lambda) = e^{-lambda/2}; equivalently the velocity MSE is the eps-MSE times 1/(1-t)^2."""
    obj = O.resolve_objective(_cfg(t_eps=0.0))
    lam = 2 * np.log((1 - T) / T)
    np.testing.assert_allclose(O.kingma_gao_weight(obj, T), np.exp(-lam / 2), rtol=1e-12)
    np.testing.assert_allclose(O.loss_weight(obj, T, "eps"), 1 / (1 - T) ** 2, rtol=1e-12)
    np.testing.assert_allclose(O.loss_weight(obj, T), 1.0, rtol=0)


def test_v_mse_cosine_is_the_exp_minus_half_lambda_weighting(x64):
    """Kingma & Gao App. D: v-MSE with the cosine schedule (s = 0) and uniform t has w = e^{-lambda/2}
    (here (2/pi) e^{-lambda/2}: the density of lambda is sech(lambda/2) / (2 pi))."""
    obj = O.resolve_objective(
        _cfg(schedule="vp_cosine", schedule_kwargs={"s": 0.0}, prediction="v", weighting="v_mse", t_eps=0.0)
    )
    lam = -2 * np.log(np.tan(np.pi * np.asarray(T) / 2))
    np.testing.assert_allclose(O.kingma_gao_weight(obj, T), 2 / np.pi * np.exp(-lam / 2), rtol=1e-10)


def test_mse_weightings_closed_forms(x64):
    """VP (alpha^2 + sigma^2 = 1): v-MSE = (1 + e^-lambda) eps-MSE (Salimans & Ho 2022);
    x0-MSE = e^-lambda eps-MSE; Min-SNR-gamma on eps / v outputs is min(SNR, g)/SNR and
    min(SNR, g)/(SNR + 1) (Hang et al. 2023 sec. 3.4); SNR-weighted x0-MSE is eps-MSE."""
    base = dict(schedule="vp_linear", t_eps=0.0)
    snr = np.exp(np.asarray(S.VPLinear().logsnr(T)))
    W = lambda weighting, kind, **kw: np.asarray(
        O.loss_weight(O.resolve_objective(_cfg(weighting=weighting, **base, **kw)), T, kind)
    )
    np.testing.assert_allclose(W("v_mse", "eps"), 1 + 1 / snr, rtol=1e-12)
    np.testing.assert_allclose(W("x0_mse", "eps"), 1 / snr, rtol=1e-12)
    np.testing.assert_allclose(
        W("min_snr", "eps", weighting_kwargs={"gamma": 5.0}), np.minimum(snr, 5) / snr, rtol=1e-12
    )
    np.testing.assert_allclose(
        W("min_snr", "v", weighting_kwargs={"gamma": 5.0}), np.minimum(snr, 5) / (snr + 1), rtol=1e-12
    )
    np.testing.assert_allclose(W("snr", "eps"), 1.0, rtol=1e-12)
    np.testing.assert_allclose(W("truncated_snr", "x0"), np.maximum(snr, 1.0), rtol=1e-12)
    # ELBO: importance weight of any time density p is 1/2 (-dlambda/dt) / p(t).
    for td in ("uniform", "logit_normal", "logsnr_uniform", "lognormal_sigma"):
        obj = O.resolve_objective(_cfg(weighting="elbo", time_distribution=td, **base))
        p = np.exp(np.asarray(O.time_log_density(obj, T)))
        dlam = np.asarray(jax.vmap(jax.grad(S.VPLinear().logsnr))(T))
        np.testing.assert_allclose(np.asarray(O.loss_weight(obj, T, "eps")) * p, -0.5 * dlam, rtol=1e-9)


def test_edm_weighting_is_kingma_gao_appendix_d(x64):
    """Kingma & Gao App. D: EDM's loss has w(lambda) = N(lambda; 2.4, 2.4^2) (e^-lambda + sd^2)/sd^2
    (lambda = -2 ln sigma with ln sigma ~ N(-1.2, 1.2^2)); ours carries the overall factor 2."""
    obj = O.resolve_objective(O.objective_preset("edm"))
    lam = np.asarray(obj.schedule.logsnr(T))
    ref = 2 * stats.norm.pdf(lam, 2.4, 2.4) * (np.exp(-lam) + 0.25) / 0.25
    np.testing.assert_allclose(O.kingma_gao_weight(obj, T), ref, rtol=1e-10)
    # and the x0-space weight is EDM's lambda(sigma) = (sigma^2 + sd^2)/(sigma sd)^2 (eq. 8 / Table 1)
    sig = np.asarray(obj.schedule.sigma(T))
    np.testing.assert_allclose(O.loss_weight(obj, T, "x0"), (sig**2 + 0.25) / (sig * 0.5) ** 2, rtol=1e-12)


@pytest.mark.parametrize(
    ("sched", "weighting", "kinds"),
    [("rectified_flow", "fm", ("velocity", "eps", "x0")), ("vp_cosine", "v_mse", ("v", "eps", "score"))],
)
def test_same_loss_whatever_the_output_kind(x64, sched, weighting, kinds):
    """The same function expressed as different output kinds gives the same loss (same key, same
    batch): the per-kind factors c_K are right. The network is the exact denoiser of a *wrong*
    distribution, so the loss is far from its minimum."""
    g = A.gmm_2d_ring(8, 1.0, 0.2)
    wrong = A.random_gmm(jax.random.key(4), 3, 2)
    batch = {"x": g.sample(jax.random.key(5), 512)}

    @jax.jit
    def losses(wrong, batch):
        out = []
        for kind in kinds:
            cfg = _cfg(schedule=sched, prediction=kind, weighting=weighting, t_eps=1e-3)
            loss_fn, _ = O.make_loss(cfg, A.ExactNet(S.get_schedule(sched), kind))
            out.append(loss_fn(wrong, batch, jax.random.key(6))[0])
        return out

    vals = np.asarray(losses(wrong, batch))
    np.testing.assert_allclose(vals, vals[0], rtol=1e-9)
    assert vals[0] > 0.1


# -------------------------------------------------------------------------------------------------
# Time distributions
# -------------------------------------------------------------------------------------------------

KS_1PCT = 1.63  # Kolmogorov-Smirnov 1% critical value times sqrt(n)


def _density_integral(obj, lo, hi):
    """int_lo^hi p(t) dt on a grid uniform in logit(t) (trapezoid; resolves both endpoints)."""
    u = np.linspace(np.log(lo / (1 - lo)), np.log(hi / (1 - hi)), 200001)
    t = 1 / (1 + np.exp(-u))
    p = np.exp(np.asarray(jax.jit(lambda t: O.time_log_density(obj, t))(jnp.asarray(t))))
    return integrate.trapezoid(p * t * (1 - t), u)


def _times(cfg, n=20000, seed=7):
    obj = O.resolve_objective(cfg)
    return obj, np.asarray(jax.jit(lambda k: O.sample_time(obj, k, n, jnp.float64))(jax.random.key(seed)))


def test_logit_normal_matches_its_cdf(x64):
    obj, t = _times(_cfg(time_distribution="logit_normal", time_kwargs={"m": 0.5, "s": 0.8}))
    cdf = lambda u: stats.norm.cdf((np.log(u) - np.log1p(-u) - 0.5) / 0.8)
    assert stats.kstest(t, cdf).statistic < KS_1PCT / np.sqrt(len(t))
    assert _density_integral(obj, 1e-12, 1 - 1e-12) == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("sname", ["edm", "rectified_flow", "vp_linear"])
def test_lognormal_sigma_matches_its_cdf(x64, sname):
    """EDM training noise (Karras et al. 2022 Table 1): ln(sigma_t/alpha_t) ~ N(-1.2, 1.2^2)."""
    obj, t = _times(_cfg(schedule=sname, time_distribution="lognormal_sigma"))
    log_sigma = np.log(np.asarray(obj.schedule.sigma(t) / obj.schedule.alpha(t)))
    assert stats.kstest(log_sigma, stats.norm(-1.2, 1.2).cdf).statistic < KS_1PCT / np.sqrt(len(t))
    assert _density_integral(obj, obj.t_eps, 1 - obj.t_eps) == pytest.approx(1.0, abs=1e-5)


def test_logsnr_uniform_matches_its_cdf(x64):
    obj, t = _times(_cfg(schedule="vp_cosine", time_distribution="logsnr_uniform", t_eps=1e-4))
    lam = np.asarray(obj.schedule.logsnr(t))
    assert stats.kstest(lam, stats.uniform(-10, 20).cdf).statistic < KS_1PCT / np.sqrt(len(t))
    # The support ends where lambda leaves [-10, 10] (a kink of the density): trapezoid error ~1e-5.
    assert _density_integral(obj, 1e-4, 1 - 1e-4) == pytest.approx(1.0, abs=5e-5)


@pytest.mark.parametrize("td", ["uniform", "antithetic", "stratified"])
def test_uniform_family(x64, td):
    te = 1e-3
    obj = O.resolve_objective(_cfg(time_distribution=td, t_eps=te))
    keys = jax.random.split(jax.random.key(0), 200)
    ts = np.asarray(jax.jit(jax.vmap(lambda k: O.sample_time(obj, k, 64, jnp.float64)))(keys))  # [200, 64]
    assert stats.kstest(ts.ravel(), stats.uniform(te, 1 - 2 * te).cdf).statistic < KS_1PCT / np.sqrt(ts.size)
    u = (np.sort(ts, axis=1) - te) / (1 - 2 * te)
    if td == "stratified":  # one draw per stratum [i/B, (i+1)/B)
        assert np.all(np.floor(u * 64) == np.arange(64))
    if td == "antithetic":  # equally spaced modulo 1
        np.testing.assert_allclose(np.diff(u, axis=1), 1 / 64, atol=1e-12)


# -------------------------------------------------------------------------------------------------
# Couplings
# -------------------------------------------------------------------------------------------------


def test_sinkhorn_and_exact_ot_couplings():
    g = A.gmm_2d_ring(8, 2.0, 0.2, dtype=jnp.float32)
    b = 128
    x = g.sample(jax.random.key(8), b)
    y = jax.random.normal(jax.random.key(9), (b, 2))
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cost = ((xn[:, None] - yn[None]) ** 2).sum(-1)
    independent = np.trace(cost) / b
    perm = O.exact_ot_pairing(xn, yn)
    assert sorted(perm) == list(range(b))
    exact = cost[np.arange(b), perm].mean()
    # independent reference: scipy's Jonker-Volgenant assignment (the pairing itself uses POT's simplex)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    assert exact == pytest.approx(cost[rows, cols].mean(), rel=1e-9)
    assert exact < 0.5 * independent
    plan_cost = []
    plan_fn = jax.jit(O.sinkhorn_plan, static_argnums=3)  # one compilation for every epsilon
    for eps in (0.5, 0.1, 0.01):
        plan = np.asarray(plan_fn(x, y, eps, 2000), np.float64)
        np.testing.assert_allclose(plan.sum(1), 1 / b, rtol=0.02)
        plan_cost.append((plan * cost).sum())
    assert plan_cost[0] > plan_cost[1] > plan_cost[2] >= exact * (1 - 1e-3)
    assert plan_cost[2] < 1.05 * exact
    for pairing in ("argmax", "sample"):
        idx = np.asarray(
            jax.jit(O.sinkhorn_pairing, static_argnums=(3, 4, 5))(
                jax.random.key(10), x, y, 0.01, pairing, 2000
            )
        )
        assert cost[np.arange(b), idx].mean() < 1.15 * exact
    paired = O.pair_batch_exact_ot({"x": xn, "noise": yn}, np.random.default_rng(0))
    assert ((paired["noise"] - xn) ** 2).sum(-1).mean() == pytest.approx(exact, rel=1e-12)


def test_couplings_in_the_loss():
    g = A.gmm_2d_ring(8, 2.0, 0.2, dtype=jnp.float32)
    x = g.sample(jax.random.key(11), 64)
    cfg = O.objective_preset("ot_cfm")
    loss_fn, _ = O.make_loss(cfg, A.ExactNet(S.RectifiedFlow(), "velocity"))
    val, metrics = jax.jit(loss_fn)(g, {"x": x}, jax.random.key(12))
    assert np.isfinite(float(val)) and set(metrics) >= {"loss", "mse", "eps_mse"}
    for coupling in ("reflow", "ot_exact"):
        loss_fn, _ = O.make_loss(_cfg(coupling=coupling), A.ExactNet(S.RectifiedFlow(), "velocity"))
        with pytest.raises(ValueError, match="noise"):
            jax.eval_shape(loss_fn, g, {"x": x}, jax.random.key(0))  # raises while tracing
    # A supplied pairing is used as is: noise = x makes z = x for every t, and the velocity target 0.
    zero_net = lambda params, z, t, cond, rng: jnp.zeros_like(z)
    loss_fn, _ = O.make_loss(_cfg(coupling="reflow"), zero_net)
    assert float(jax.jit(loss_fn)(None, {"x": x, "noise": x}, jax.random.key(0))[0]) == 0.0


# -------------------------------------------------------------------------------------------------
# Conditioning and validation
# -------------------------------------------------------------------------------------------------


def test_label_dropout_rate():
    """A network that outputs its label, x0-MSE on x = 0: the loss is (1-p) 1 + p null^2."""
    p, null = 0.3, 10
    cfg = _cfg(prediction="x0", weighting="x0_mse", label_dropout=p)
    net = lambda params, z, t, cond, rng: jnp.broadcast_to(cond["label"][:, None].astype(z.dtype), z.shape)
    loss_fn, _ = O.make_loss(cfg, net, num_classes=null)
    n = 8192
    batch = {"x": jnp.zeros((n, 2)), "label": jnp.ones((n,), jnp.int32)}
    val = float(jax.jit(loss_fn)(None, batch, jax.random.key(13))[0])
    frac = (val - 1) / (null**2 - 1)
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)
    with pytest.raises(ValueError, match="num_classes"):
        O.make_loss(cfg, net)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"weighting": "snr_min"}, "valid names.*min_snr"),
        ({"time_distribution": "lognormal"}, "valid names.*lognormal_sigma"),
        ({"coupling": "ot"}, "valid names.*ot_sinkhorn"),
        ({"prediction": "noise"}, "valid names.*velocity"),
        ({"schedule": "cosine"}, "valid names.*vp_cosine"),
        ({"preconditioning": "karras"}, "valid names.*edm"),
        ({"weighting": "min_snr", "weighting_kwargs": {"gama": 5.0}}, "valid kwargs.*gamma"),
        ({"time_distribution": "logit_normal", "time_kwargs": {"mu": 0.0}}, "valid kwargs.*'m'"),
        ({"coupling": "ot_sinkhorn", "coupling_kwargs": {"pairing": "max"}}, "argmax"),
        ({"preconditioning": "edm", "prediction": "eps"}, "prediction='x0'"),
        ({"t_eps": 0.7}, "t_eps"),
        ({"label_dropout": 1.5}, "label_dropout"),
    ],
)
def test_bad_config_raises(override, match):
    with pytest.raises(ValueError, match=match):
        O.validate_objective_config(_cfg(**override))


def test_unknown_field_and_preset_raise():
    cfg = O.default_objective_config()
    cfg.weighing = "fm"
    with pytest.raises(ValueError, match="valid fields"):
        O.make_loss(cfg, lambda *a: None)
    with pytest.raises(ValueError, match="valid presets.*rf_logit_normal"):
        O.objective_preset("sd3")
    for name in O.OBJECTIVE_PRESETS:
        O.validate_objective_config(O.objective_preset(name))
