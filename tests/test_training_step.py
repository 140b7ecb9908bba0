"""Train state and step: EMA closed forms, LR schedule, Adam's first step, gradient accumulation,
mixed precision, and the non-finite skip / halt.

References are closed forms: the EMA recursion unrolled, the EDM2 power-EMA weights (Karras et al.
2024, eq. 3 telescoped), the warmup + cosine formula, the first Adam update
-lr * g / (|g| + eps) (Kingma & Ba 2015, Alg. 1 with bias correction) and the analytic gradient
of a quadratic loss.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from diffusion_jax.training import state as st
from diffusion_jax.training import step as sp


def _tcfg(**kw):
    t = dict(
        num_steps=100,
        optimizer="adam",
        lr=1e-2,
        warmup_steps=0,
        lr_schedule="constant",
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        grad_clip=0.0,
        grad_accum=1,
        ema_decays=(0.9,),
        ema_power=None,
    )
    t.update(kw)
    return ml_collections.ConfigDict(t)


def test_ema_decay_matches_unrolled_recursion():
    d = 0.9
    thetas = np.array([0.0, 1.0, -2.0, 3.5, 0.25, 4.0])  # theta_0 (init) .. theta_T
    ema = {"ema_0p9": jnp.asarray(thetas[0])}
    for i, th in enumerate(thetas[1:], start=1):
        ema = st.update_ema(ema, jnp.asarray(th), jnp.asarray(i), (d,), None)
    T = len(thetas) - 1
    want = d**T * thetas[0] + sum((1 - d) * d ** (T - i) * thetas[i] for i in range(1, T + 1))
    assert float(ema["ema_0p9"]) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.05, 6.94])
def test_power_ema_matches_telescoped_weights(gamma):
    # beta(t) = (1 - 1/t)^(g+1): prod_{j=i+1}^T beta(j) = (i/T)^(g+1), so theta_i has weight
    # (1 - beta(i)) (i/T)^(g+1) in the average after T updates, and the weights sum to 1.
    rng = np.random.default_rng(0)
    T = 40
    thetas = rng.normal(size=T + 1)
    name = st.ema_names((), gamma)[0]
    ema = {name: jnp.asarray(thetas[0], jnp.float32)}
    for i in range(1, T + 1):
        ema = st.update_ema(ema, jnp.asarray(thetas[i], jnp.float32), jnp.asarray(i), (), gamma)
    w = np.array([(1 - (1 - 1 / i) ** (gamma + 1)) * (i / T) ** (gamma + 1) for i in range(1, T + 1)])
    assert w.sum() == pytest.approx(1.0, rel=1e-12)
    assert float(ema[name]) == pytest.approx(float(w @ thetas[1:]), rel=1e-5, abs=1e-6)


def test_ema_names_are_plain_identifiers():
    assert st.ema_names((0.999, 0.9999), 0.05) == ("ema_0p999", "ema_0p9999", "power_0p05")


def test_lr_schedule_warmup_then_cosine():
    cfg = _tcfg(lr=2e-3, warmup_steps=10, lr_schedule="cosine", num_steps=110)
    sched = st.lr_schedule(cfg)
    for s in (0, 5, 10, 35, 60, 110):
        want = 2e-3 * s / 10 if s < 10 else 2e-3 * 0.5 * (1 + np.cos(np.pi * (s - 10) / 100))
        assert float(sched(s)) == pytest.approx(want, rel=1e-5, abs=1e-12)
    const = st.lr_schedule(_tcfg(lr=1e-3, warmup_steps=4))
    assert float(const(2)) == pytest.approx(5e-4) and float(const(50)) == pytest.approx(1e-3)


def _quadratic_setup(accum, n=16, clip=0.0):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = rng.normal(size=(n,)).astype(np.float32)
    params = {"w": jnp.asarray([0.3, -0.2, 0.5]), "b": jnp.asarray(0.1)}

    def loss_fn(p, batch, key):
        del key
        r = batch["x"] @ p["w"] + p["b"] - batch["y"]
        loss = jnp.mean(r**2)
        return loss, {"mse": loss}

    cfg = _tcfg(grad_accum=accum, grad_clip=clip)
    tx = st.make_optimizer(cfg)
    state = st.init_train_state(params, tx, cfg, jax.random.key(0))
    step = jax.jit(sp.make_train_step(loss_fn, tx, cfg))
    return state, step, {"x": x, "y": y}, params


@pytest.mark.parametrize("accum", [1, 4])
def test_first_adam_step_matches_closed_form(accum):
    state, step, batch, p0 = _quadratic_setup(accum)
    new, metrics = step(state, batch)
    x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
    r = x @ np.asarray(p0["w"], np.float64) + float(p0["b"]) - y
    g_w = 2 * x.T @ r / len(y)
    g_b = 2 * r.mean()
    lr, eps = 1e-2, 1e-8
    np.testing.assert_allclose(
        np.asarray(new.params["w"]), np.asarray(p0["w"]) - lr * g_w / (np.abs(g_w) + eps), rtol=1e-5
    )
    assert float(new.params["b"]) == pytest.approx(float(p0["b"]) - lr * g_b / (abs(g_b) + eps), rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(np.sqrt(np.sum(g_w**2) + g_b**2), rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(np.mean(r**2), rel=1e-5)
    assert int(new.step) == 1 and float(metrics["finite"]) == 1.0


def test_grad_accumulation_equals_full_batch_over_steps():
    s1, f1, batch, _ = _quadratic_setup(1)
    s4, f4, _, _ = _quadratic_setup(4)
    for _ in range(5):
        s1, m1 = f1(s1, batch)
        s4, m4 = f4(s4, batch)
    # Same gradient up to float32 summation order: equal parameters to 1e-6 after 5 Adam steps.
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(s1.params[k]), np.asarray(s4.params[k]), rtol=1e-6, atol=1e-7)
    assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-6)


def test_microbatch_split_is_strided_and_checks_divisibility():
    b = {"x": jnp.arange(8)}
    np.testing.assert_array_equal(sp.split_microbatches(b, 2)["x"], [[0, 2, 4, 6], [1, 3, 5, 7]])
    with pytest.raises(ValueError, match="grad_accum=3"):
        sp.split_microbatches(b, 3)


def test_nonfinite_update_is_skipped_and_counted_then_halts():
    params = {"w": jnp.asarray([1.0, 2.0])}

    def loss_fn(p, batch, key):
        del key
        loss = jnp.sum(p["w"] ** 2) * batch["scale"][0]  # scale = nan -> non-finite
        return loss, {}

    cfg = _tcfg(ema_decays=(0.5,), ema_power=0.1)
    tx = st.make_optimizer(cfg)
    state = st.init_train_state(params, tx, cfg, jax.random.key(0))
    step = jax.jit(sp.make_train_step(loss_fn, tx, cfg))
    good, bad = {"scale": jnp.ones(2)}, {"scale": jnp.full(2, jnp.nan)}
    state, m = step(state, good)
    before = jax.tree.map(np.asarray, (state.params, state.ema, state.opt_state))
    for k in range(1, 4):
        state, m = step(state, bad)
        assert float(m["finite"]) == 0.0
        assert int(m["nonfinite_in_a_row"]) == k and int(m["nonfinite_total"]) == k
        after = jax.tree.map(np.asarray, (state.params, state.ema, state.opt_state))
        jax.tree.map(np.testing.assert_array_equal, before, after)
        if k < 3:
            sp.check_nonfinite(m, 3, int(state.step))
        else:
            with pytest.raises(sp.NonFiniteError, match="3 consecutive"):
                sp.check_nonfinite(m, 3, int(state.step))
    assert int(state.step) == 4  # skipped steps still advance the step counter
    state, m = step(state, good)  # a finite step resets the run but not the total
    assert int(m["nonfinite_in_a_row"]) == 0 and int(m["nonfinite_total"]) == 3
    assert not np.array_equal(np.asarray(state.params["w"]), before[0]["w"])


def test_bfloat16_compute_casts_network_only():
    seen = {}

    def net_fn(params, z, t_in, cond=None, rng=None):
        seen.update(
            p=params["w"].dtype, z=z.dtype, t=t_in.dtype, c=cond["context"].dtype, lab=cond["label"].dtype
        )
        return z * params["w"]

    f = sp.with_compute_dtype(net_fn, "bfloat16")
    out = f(
        {"w": jnp.float32(3.0)},
        jnp.ones((2, 2)),
        jnp.ones(2),
        {"context": jnp.ones((2, 1)), "label": jnp.zeros(2, jnp.int32)},
    )
    assert out.dtype == jnp.float32 and float(out[0, 0]) == 3.0
    assert seen == dict(p=jnp.bfloat16, z=jnp.bfloat16, t=jnp.float32, c=jnp.bfloat16, lab=jnp.int32)
    assert sp.with_compute_dtype(net_fn, "float32") is net_fn
    with pytest.raises(ValueError, match="compute_dtype.*valid"):
        sp.with_compute_dtype(net_fn, "float16")


def test_jitted_step_donates_and_keeps_shardings():
    state, _, batch, _ = _quadratic_setup(1)
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    rep = NamedSharding(mesh, PartitionSpec())
    state_sh = jax.tree.map(lambda _: rep, state)
    batch_sh = NamedSharding(mesh, PartitionSpec("data"))

    def loss_fn(p, b, key):
        del key
        return jnp.mean((b["x"] @ p["w"] + p["b"] - b["y"]) ** 2), {}

    cfg = _tcfg()
    f = sp.jit_train_step(sp.make_train_step(loss_fn, st.make_optimizer(cfg), cfg), mesh, state_sh, batch_sh)
    state = jax.device_put(state, state_sh)
    w_in = state.params["w"]
    new, _ = f(state, jax.device_put(batch, batch_sh))
    assert w_in.is_deleted()  # donated
    assert new.params["w"].sharding == rep
