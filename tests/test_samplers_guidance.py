"""Classifier-free guidance, negative conditioning and the guidance interval, on an exact
class-conditional Gaussian-mixture denoiser (label 0 / 1 = one component, label 2 = null = the mixture)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic
from diffusion_jax import schedules as S
from diffusion_jax.predictions import Denoiser, make_denoiser
from diffusion_jax.samplers import guidance as gd
from diffusion_jax.samplers import stochastic as st

CALLS = []


def conditional_gmm(schedule, kind="x0"):
    """Exact class-conditional denoiser of gmm_1d; records the batch size of every network call."""
    mix = analytic.gmm_1d(dtype=jnp.float64)
    parts = [
        analytic.GaussianMixture(mix.weights[k : k + 1], mix.means[k : k + 1], mix.covs[k : k + 1])
        for k in range(2)
    ] + [mix]
    dens = [p.denoiser(schedule, kind) for p in parts]

    def net(params, z, t, cond, rng):
        CALLS.append(z.shape[0])
        outs = jnp.stack([d.raw(z, t) for d in dens])  # [3, B, 1]
        return jnp.take_along_axis(outs, cond["y"][None, :, None], axis=0)[0]

    return make_denoiser(net, schedule, kind), dens


def labels(v, b):
    return {"y": jnp.full((b,), v, jnp.int32)}


@pytest.mark.parametrize("kind", ["x0", "eps"])
def test_cfg_scales_and_single_batched_call(x64, kind):
    sch = S.VPLinear()
    den, dens = conditional_gmm(sch, kind)
    b = 5
    z = jnp.linspace(-2.0, 2.0, b)[:, None]
    t = 0.4
    c_x0, c_eps = dens[1].x0_eps(z, t)
    u_x0, u_eps = dens[2].x0_eps(z, t)
    for w, ref_x0, ref_eps in [(1.0, c_x0, c_eps), (0.0, u_x0, u_eps)]:
        g = gd.cfg_denoiser(den, labels(1, b), labels(2, b), w)
        np.testing.assert_allclose(g.x0(z, t), ref_x0, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g.eps(z, t), ref_eps, rtol=1e-12, atol=1e-12)
    g = gd.cfg_denoiser(den, labels(1, b), labels(2, b), 3.0)
    CALLS.clear()
    x0, eps = g.x0_eps(z, t)
    assert CALLS == [2 * b]  # cond and uncond in ONE network call on the concatenated batch
    # guiding the model's own output kind = guiding x0 = guiding eps (affine maps, shared z and t)
    np.testing.assert_allclose(x0, u_x0 + 3.0 * (c_x0 - u_x0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(eps, u_eps + 3.0 * (c_eps - u_eps), rtol=1e-10, atol=1e-12)
    # the cond is not the uncond: guidance really moves the prediction
    assert np.abs(np.asarray(x0 - c_x0)).max() > 0.1


def test_negative_conditioning(x64):
    den, dens = conditional_gmm(S.EDM())
    z = jnp.linspace(-2.0, 2.0, 4)[:, None]
    t = 0.01  # sigma 0.8
    g = gd.negative_denoiser(den, labels(1, 4), labels(0, 4), 2.5)
    c, n = dens[1].x0(z, t), dens[0].x0(z, t)
    np.testing.assert_allclose(g.x0(z, t), n + 2.5 * (c - n), rtol=1e-12, atol=1e-12)


def test_guidance_interval(x64):
    """EDM path: sigma = 80 t. Interval (0.5, 2]: guided for sigma in it, conditional outside, per sample."""
    den, dens = conditional_gmm(S.EDM())
    g = gd.cfg_denoiser(den, labels(1, 4), labels(2, 4), 4.0, interval=(0.5, 2.0))
    z = jnp.array([[0.3], [0.3], [0.3], [0.3]])
    sig = np.array([0.4, 0.5, 1.0, 2.0])  # 0.5 excluded (open), 2.0 included (closed)
    t = jnp.asarray(sig / 80.0)
    out = np.asarray(g.x0(z, t))[:, 0]
    c = np.asarray(dens[1].x0(z, t))[:, 0]
    u = np.asarray(dens[2].x0(z, t))[:, 0]
    guided = u + 4.0 * (c - u)
    inside = np.array([False, False, True, True])
    np.testing.assert_allclose(out[inside], guided[inside], rtol=1e-12)
    np.testing.assert_allclose(out[~inside], c[~inside], rtol=1e-12)
    assert np.all(np.abs(guided - c) > 1e-3)


def test_guided_denoiser_in_a_sampler(x64):
    """Any sampler takes the wrapped denoiser unchanged; scale 1 reproduces the conditional run."""
    sch = S.VPLinear()
    den, _ = conditional_gmm(sch)
    grid = jnp.linspace(1.0, 1e-3, 11)
    keys = jax.random.split(jax.random.key(0), 6)
    z = jax.random.normal(jax.random.key(1), (6, 1), jnp.float64)
    sampler = st.DDIMStochastic(eta=0.5)
    run = jax.jit(lambda d: sampler.run(d, z, grid, keys).samples)
    cond_only = run(den.with_cond(labels(1, 6)))
    guided1 = run(gd.cfg_denoiser(den, labels(1, 6), labels(2, 6), 1.0))
    np.testing.assert_allclose(guided1, cond_only, rtol=0, atol=1e-10)
    guided = run(gd.cfg_denoiser(den, labels(1, 1), labels(2, 1), 3.0))  # [1, ...] conds broadcast
    assert guided.shape == (6, 1) and np.all(np.isfinite(guided))
    # with_cond takes a {"cond", "uncond"} pair (what seeds.sample(cond=...) sets per chunk)
    g = gd.cfg_denoiser(den, labels(1, 1), labels(2, 1), 3.0).with_cond(
        gd.guidance_cond(labels(1, 6), labels(2, 6))
    )
    np.testing.assert_allclose(run(g), guided, rtol=0, atol=1e-12)


def test_bad_input(x64):
    den, _ = conditional_gmm(S.VPLinear())
    with pytest.raises(ValueError, match="structure"):
        gd.cfg_denoiser(den, labels(1, 2), {"z": jnp.zeros(2, jnp.int32)}, 2.0)
    with pytest.raises(ValueError, match="lo < hi"):
        gd.cfg_denoiser(den, labels(1, 2), labels(2, 2), 2.0, interval=(3.0, 1.0))
    with pytest.raises(ValueError, match="interval"):
        gd.cfg_denoiser(den, labels(1, 2), labels(2, 2), 2.0, interval=3.0)
    with pytest.raises(ValueError, match="scale"):
        gd.cfg_denoiser(den, labels(1, 2), labels(2, 2), float("nan"))
    with pytest.raises(ValueError, match="both"):
        gd.cfg_denoiser(den, None, labels(2, 2), 2.0)
    with pytest.raises(ValueError, match="batch axis"):
        gd.cfg_denoiser(den, {"y": jnp.int32(1)}, {"y": jnp.int32(2)}, 2.0)
    assert isinstance(gd.cfg_denoiser(den, labels(1, 2), labels(2, 2), 2.0), Denoiser)


def test_guided_sampling_with_fixed_seeds(x64):
    """seeds.sample(cond=guidance_cond(...)) hands each chunk its rows of the {cond, uncond} pair."""
    from diffusion_jax.samplers import seeds as sd

    sch = S.VPLinear()
    den, _ = conditional_gmm(sch)
    g = gd.cfg_denoiser(den, labels(1, 1), labels(2, 1), 2.0)
    grid = np.linspace(1.0, 1e-3, 6)
    y = jnp.array([0, 1, 0, 1, 1], jnp.int32)
    pair = gd.guidance_cond({"y": y}, {"y": jnp.full((5,), 2, jnp.int32)})
    out = sd.sample(g, st.DDPMAncestral(), grid, "0-4", (1,), cond=pair, chunk_size=2, dtype=jnp.float64)
    # reference: the same seeds' keys and initial noise, one full-batch run
    keys = sd.sample_keys(jnp.arange(5, dtype=jnp.uint32), 0)
    z0 = sd.initial_noise(keys, (1,), sch.sigma(1.0), jnp.float64)
    ref = st.DDPMAncestral().run(g.with_cond(pair), z0, jnp.asarray(grid), keys).samples
    np.testing.assert_allclose(out.samples, ref, rtol=0, atol=1e-10)
    # class 0 and class 1 samples end near their own component means (-1 and 1.5)
    s = np.asarray(out.samples)[:, 0]
    assert np.all(np.where(np.asarray(y) == 0, s < 0.5, s > 0.0))


def test_guidance_scale_sweep_reuses_the_compiled_sampler(x64):
    """The scale is a traced leaf of the guided denoiser and its network function compares equal
    across wrappers of the same model, so a jitted sampler taking the guided denoiser as an argument
    traces once for a sweep of scales (re-wrapping included), and the results still follow the scale."""
    sch = S.VPLinear()
    den, _ = conditional_gmm(sch, "x0")
    b = 4
    z = jnp.linspace(-1.0, 1.0, b)[:, None]
    traces = []

    @jax.jit
    def predict(g, z):
        traces.append(1)
        return g.x0(z, 0.3)

    outs = [predict(gd.cfg_denoiser(den, labels(1, b), labels(2, b), w), z) for w in (0.0, 1.0, 2.5, 2.5)]
    assert len(traces) == 1
    # Linear in w: out(2.5) = out(0) + 2.5 (out(1) - out(0)).
    np.testing.assert_allclose(outs[2], outs[0] + 2.5 * (outs[1] - outs[0]), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(outs[2], outs[3])
    # A different interval is different structure: a new trace, by design.
    predict(gd.cfg_denoiser(den, labels(1, b), labels(2, b), 2.5, interval=(0.1, 1.0)), z)
    assert len(traces) == 2


def test_null_condition_is_what_cfg_dropout_trains():
    """Labels become the null label, caption / context masks are emptied, tokens and context stay."""
    cond = {
        "label": jnp.array([1, 4], jnp.int32),
        "tokens": jnp.array([[97, 98], [99, 0]], jnp.int32),
        "tokens_mask": jnp.array([[True, True], [True, False]]),
        "context": jnp.ones((2, 3, 5)),
        "context_mask": jnp.ones((2, 3), bool),
    }
    u = gd.null_condition(cond, 10)
    np.testing.assert_array_equal(u["label"], [10, 10])
    assert not bool(u["tokens_mask"].any()) and not bool(u["context_mask"].any())
    np.testing.assert_array_equal(u["tokens"], cond["tokens"])
    np.testing.assert_array_equal(u["context"], cond["context"])
    with pytest.raises(ValueError, match="null_label"):
        gd.null_condition({"label": cond["label"]})
