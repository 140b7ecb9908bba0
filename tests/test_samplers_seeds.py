"""Fixed-seed sampling: bitwise invariance to batch size and device count, key derivation, seed
parsing and output files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion_jax import schedules as S
from diffusion_jax.predictions import make_denoiser
from diffusion_jax.samplers import seeds as sd
from diffusion_jax.samplers import stochastic as st

D, H = 16, 64


def mlp_denoiser(schedule=None, kind="eps"):
    """A random-weight 2-layer MLP (matmul-based, float32): the shapes XLA may round differently."""
    k1, k2, k3 = jax.random.split(jax.random.key(42), 3)
    params = {
        "w1": jax.random.normal(k1, (D, H)) / np.sqrt(D),
        "wt": jax.random.normal(k2, (H,)),
        "w2": jax.random.normal(k3, (H, D)) / np.sqrt(H),
    }

    def net(p, z, t, cond, rng):
        h = jnp.tanh(z @ p["w1"] + t[:, None] * p["wt"])
        return 0.1 * (h @ p["w2"]) + 0.5 * z

    return make_denoiser(net, schedule or S.VPLinear(), kind, params=params)


GRID = np.linspace(1.0, 1e-3, 9)


DDPM = st.DDPMAncestral()


def run(seeds, mesh=None, sampler=DDPM, **kw):
    return sd.sample(mlp_denoiser(), sampler, GRID, seeds, (D,), base_seed=3, mesh=mesh, chunk_size=4, **kw)


def test_bitwise_invariance_batch_and_devices():
    assert len(jax.devices()) >= 8
    mesh8 = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    a1 = np.asarray(run([5]).samples)
    a7 = np.asarray(run("0-6").samples)
    a64 = np.asarray(run("0-63").samples)
    b7 = np.asarray(run("0-6", mesh=mesh8).samples)
    b64 = np.asarray(run("0-63", mesh=mesh8).samples)
    assert a64.shape == (64, D) and a64.dtype == np.float32
    for x in (a7, a64, b7, b64):
        np.testing.assert_array_equal(x[5], a1[0])
    for x in (a64, b7, b64):
        np.testing.assert_array_equal(x[:7], a7)
    np.testing.assert_array_equal(b64, a64)
    # different seeds give different samples; a permuted seed list permutes the samples
    assert np.abs(a64[0] - a64[1]).min() > 0
    perm = np.asarray(run([6, 5, 0]).samples)
    np.testing.assert_array_equal(perm, a7[[6, 5, 0]])


def test_keys_and_trajectory():
    """Sample i starts from sigma(t_max) N(0, I) drawn from fold_in(fold_in(key(base), seed), INIT_TAG)
    and its step-j noise comes from fold_in(sample key, j)."""
    out = run([11, 2], return_trajectory=True, sampler=st.DDIMStochastic(eta=1.0))
    key = jax.random.fold_in(jax.random.key(3), 11)
    z0 = jax.random.normal(jax.random.fold_in(key, sd.INIT_TAG), (D,))
    sig = float(S.VPLinear().sigma(1.0))
    np.testing.assert_allclose(out.trajectory[0, 0], sig * z0, rtol=1e-6)
    assert out.trajectory.shape == (len(GRID), 2, D)
    np.testing.assert_array_equal(out.trajectory[-1], out.samples)
    # one step by hand (DDIM eta=1 = posterior sampling), noise from fold_in(key, 0)
    den = mlp_denoiser()
    z = out.trajectory[0, :1]
    ref = st.DDIMStochastic(eta=1.0).step(
        den, {"z": z, "nfe": jnp.int32(0)}, jnp.float32(GRID[0]), jnp.float32(GRID[1]), jnp.int32(0),
        jax.random.fold_in(key, 0)[None], len(GRID) - 1,
    )["z"]  # fmt: skip
    np.testing.assert_allclose(out.trajectory[1, :1], ref, rtol=1e-5, atol=1e-6)
    assert int(out.nfe) == len(GRID) - 1
    other = run([11], return_trajectory=False)  # base_seed matters
    assert not np.array_equal(
        np.asarray(sd.sample(mlp_denoiser(), st.DDPMAncestral(), GRID, [11], (D,), base_seed=4).samples),
        np.asarray(other.samples),
    )


def test_conditioning_travels_with_its_seed():
    def net(p, z, t, cond, rng):
        return z * 0.5 + cond["y"][:, None]

    den = make_denoiser(net, S.VPLinear(), "x0", cond={"y": jnp.zeros(1)})
    y = np.arange(7, dtype=np.float32)
    full = sd.sample(den, st.DDPMAncestral(), GRID, "0-6", (3,), cond={"y": y}, chunk_size=2).samples
    one = sd.sample(den, st.DDPMAncestral(), GRID, [4], (3,), cond={"y": y[4:5]}, chunk_size=2).samples
    np.testing.assert_array_equal(full[4], one[0])
    with pytest.raises(ValueError, match="leading axis"):
        sd.sample(den, st.DDPMAncestral(), GRID, "0-6", (3,), cond={"y": y[:3]})


def test_parse_seeds():
    assert sd.parse_seeds("0-63,100") == list(range(64)) + [100]
    assert sd.parse_seeds(" 3 , 7-9") == [3, 7, 8, 9]
    assert sd.parse_seeds(12) == [12]
    assert sd.parse_seeds([4, 2]) == [4, 2]
    for bad in ["", "a-3", "5-2", "1,1", "-3", "0-4294967296", "1,,2"]:
        with pytest.raises(ValueError, match="seed"):
            sd.parse_seeds(bad)


def test_bad_input_before_compiling():
    den = mlp_denoiser()
    with pytest.raises(ValueError, match="chunk_size"):
        sd.sample(den, st.DDPMAncestral(), GRID, "0-3", (D,), chunk_size=0)
    with pytest.raises(ValueError, match="eta"):
        sd.sample(den, st.DDIMStochastic(eta=3.0), GRID, "0-3", (D,))
    with pytest.raises(ValueError, match="decreasing"):
        sd.sample(den, st.DDPMAncestral(), GRID[::-1], "0-3", (D,))
    with pytest.raises(ValueError, match="Sampler"):
        sd.sample(den, "ddpm", GRID, "0-3", (D,))


def test_output_files(tmp_path):
    x = np.linspace(-1.2, 1.2, 2 * 4 * 5 * 3).reshape(2, 4, 5, 3)
    paths = sd.save_samples(str(tmp_path), [7, 123456], x)
    assert sorted(os.path.basename(p) for p in paths) == [
        "000007.npz",
        "000007.png",
        "123456.npz",
        "123456.png",
    ]
    img = np.asarray(Image.open(tmp_path / "123456.png"))
    expect = np.clip(np.round((x[1] + 1) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(img, expect)
    assert img[-1, -1, -1] == 255 and np.asarray(Image.open(tmp_path / "000007.png"))[0, 0, 0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "000007.npz")["sample"], x[0])
    # 1-channel images become grayscale PNGs; low-dimensional samples only get .npz
    sd.save_samples(str(tmp_path / "g"), [1], np.zeros((1, 4, 4, 1)))
    assert Image.open(tmp_path / "g" / "000001.png").mode == "L"
    paths = sd.save_samples(str(tmp_path / "v"), [0, 1], np.zeros((2, 16)))
    assert [os.path.basename(p) for p in paths] == ["000000.npz", "000001.npz"]
    with pytest.raises(ValueError, match="image"):
        sd.save_samples(str(tmp_path / "v"), [0, 1], np.zeros((2, 16)), image=True)


def test_sampling_cli(tmp_path):
    """The `diffusion_jax.sample` entry point's library side on the analytic denoiser: validation,
    files with their settings, resuming, the listing."""
    import json

    from diffusion_jax import sample as cli

    cfg = cli.get_default_config()
    cfg.seeds = "2-4,9"
    cfg.grid.num_steps = 4
    cfg.sampler.name = "ddpm"
    cfg.progress = False
    summary = cli.run_sampling(cfg, str(tmp_path))
    files = sorted(os.listdir(tmp_path / "samples"))
    assert files == ["000002.npz", "000003.npz", "000004.npz", "000009.npz", "samples.png", "sampling.json"]
    assert summary["nfe"] == 4 and summary["num_samples"] == 4 and summary["drawn"] == 4
    assert json.load(open(tmp_path / "samples" / "sampling.json"))["seeds"] == "2-4,9"
    f = np.load(tmp_path / "samples" / "000009.npz")
    assert str(f["sampler"]) == "ddpm" and str(f["grid"]) == "karras" and int(f["nfe"]) == 4
    # the files hold what the engine gives for the same seeds
    plan, _, _ = cli.build_plan(cfg, str(tmp_path))
    ref = sd.sample(
        plan.denoiser, plan.sampler, plan.grid, [9], plan.shape, chunk_size=plan.chunk_size
    ).samples
    np.testing.assert_array_equal(f["sample"], ref[0])
    # resumable: a second run draws nothing; other settings into the same folder are refused
    assert cli.run_sampling(cfg, str(tmp_path))["skipped"] == 4
    os.remove(tmp_path / "samples" / "000003.npz")
    with open(tmp_path / "samples" / "000004.npz", "wb") as fh:
        fh.write(b"truncated")
    again = cli.run_sampling(cfg, str(tmp_path))
    assert again["drawn"] == 2 and again["skipped"] == 2
    np.testing.assert_array_equal(
        np.load(tmp_path / "samples" / "000004.npz")["sample"],
        np.asarray(
            sd.sample(
                plan.denoiser, plan.sampler, plan.grid, [4], plan.shape, chunk_size=plan.chunk_size
            ).samples[0]
        ),
    )
    cfg.grid.num_steps = 5
    with pytest.raises(ValueError, match="other settings"):
        cli.run_sampling(cfg, str(tmp_path))
    for field, value, match in [
        ("sampler.name", "nope", "valid samplers"),
        ("grid.name", "nope", "valid grids"),
        ("seeds", "5-1", "descending"),
        ("dtype", "int8", "dtype"),
        ("denoiser.source", "url", "denoiser.source"),
        ("denoiser.kind", "noise", "denoiser.kind"),
        ("schedule.name", "nope", "valid names"),
        ("num_devices", 99, "num_devices"),
        ("conditioning.labels", "0-3", "unconditional"),
        ("conditioning.guidance_scale", 2.0, "unconditional"),
    ]:
        bad = cli.get_default_config()
        sec, _, leaf = field.rpartition(".")
        setattr(bad[sec] if sec else bad, leaf, value)
        with pytest.raises(ValueError, match=match):
            cli.build_plan(bad, str(tmp_path))
    bad = cli.get_default_config()
    bad.denoiser.source = "checkpoint"
    with pytest.raises(ValueError, match="workdir"):
        cli.build_plan(bad, None)


def test_analytic_sampling_never_writes_into_a_run(tmp_path):
    from diffusion_jax import sample as cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    cfg = cli.get_default_config()
    cfg.denoiser.source = "analytic"
    with pytest.raises(ValueError, match="never writes into the run"):
        cli.build_plan(cfg, str(run))
    cfg.output_dir = str(run / "samples" / "x")
    with pytest.raises(ValueError, match="inside the run"):
        cli.build_plan(cfg, str(run))
    assert sorted(os.listdir(run)) == ["config.json"]


def test_listing_names_every_sampler_and_grid():
    from diffusion_jax import sample as cli

    listing = cli.format_listing()
    for name in list(st.SAMPLERS) + ["karras", "uniform", "euler", "dpmpp_2m"]:
        assert f"  {name}" in listing


def test_combined_sampler_grid_name_sets_the_grid(tmp_path):
    """`--config.sampler.name=dpmpp_2m_karras` (the name users type) picks the Karras grid unless a
    grid is given."""
    from diffusion_jax import sample as cli

    cfg = cli.get_default_config()
    cfg.sampler.name = "dpmpp_2m_karras"
    cfg.grid.num_steps = 4
    plan, _, _ = cli.build_plan(cfg, str(tmp_path))
    assert plan.meta["grid"] == "karras" and type(plan.sampler).__name__ == "DPMSolverPP2M"
    cfg.grid.name = "logsnr"
    assert cli.build_plan(cfg, str(tmp_path))[0].meta["grid"] == "logsnr"
