"""A converted tiny DiT + VAE sampled through our engine (`samplers.seeds.sample`, DDIM, classifier-free
guidance against the learned null class, DiT's 1000-step linear-beta schedule) equals diffusers'
DDIMScheduler loop over the reference models, step for step (relative error <= 1e-4, float32), and
the decoded images agree. Also: a missing converted file names itself, its source and the command."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from configs.pretrained import ddpm_cifar10, dit_xl2  # noqa: E402
from diffusion_jax import convert  # noqa: E402
from diffusion_jax.convert import dit, pretrained  # noqa: E402
from diffusion_jax.samplers import seeds  # noqa: E402
from tests.convert_helpers import randomize, rel_err  # noqa: E402

DIT = dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
           sample_size=8, patch_size=2, num_embeds_ada_norm=10)  # fmt: skip
VAE = dict(block_out_channels=(128, 128), down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, sample_size=16)  # fmt: skip


def make_tiny_pretrained(root: str):
    """Random tiny diffusers DiT + VAE saved as published folders and converted; returns
    (reference DiT, reference VAE, config 'tiny' pointing at the converted files)."""
    torch.manual_seed(0)
    ref_dit = diffusers.DiTTransformer2DModel(**DIT).eval()
    randomize(ref_dit, 0, scale=0.1)
    sd = ref_dit.state_dict()
    with torch.no_grad():
        for k in dit.EMB_KEYS:
            sd[f"transformer_blocks.1.{k}"].copy_(sd[f"transformer_blocks.0.{k}"])
    ref_vae = diffusers.AutoencoderKL(**VAE).eval()
    randomize(ref_vae, 1, scale=0.05)
    ref_dit.save_pretrained(os.path.join(root, "dit"))
    ref_vae.save_pretrained(os.path.join(root, "vae"))
    cfg = dit_xl2.get_config("tiny")
    cfg.pretrained.denoiser.path = os.path.join(root, "dit_tiny.safetensors")
    cfg.pretrained.autoencoder.path = os.path.join(root, "vae_tiny.safetensors")
    convert.convert("dit", os.path.join(root, "dit"), cfg.pretrained.denoiser.path)
    convert.convert("vae", os.path.join(root, "vae"), cfg.pretrained.autoencoder.path)
    return ref_dit, ref_vae, cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_pretrained(str(tmp_path_factory.mktemp("pretrained")))


def _reference_ddim(ref_dit, ref_vae, x_t_nchw, labels, scale, steps):
    """diffusers' DDIM loop (its own convention: x_T = eps at the first timestep) over the reference
    models, CFG on all latent channels; returns (timesteps, trajectory [S+1, B, ...], images)."""
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                    beta_end=0.02, clip_sample=False, set_alpha_to_one=True,
                                    timestep_spacing="leading", steps_offset=0)  # fmt: skip
    sched.set_timesteps(steps)
    x = torch.from_numpy(np.array(x_t_nchw))
    b, traj = x.shape[0], [x.numpy()]
    y = torch.as_tensor(labels)
    null = torch.full((b,), DIT["num_embeds_ada_norm"])
    with torch.no_grad():
        for t in sched.timesteps:
            out = ref_dit(
                torch.cat([x, x]), timestep=t.repeat(2 * b), class_labels=torch.cat([y, null])
            ).sample
            cond, uncond = out[:, :4].chunk(2)  # learned-sigma channels dropped
            eps = uncond + scale * (cond - uncond)
            x = sched.step(eps, t, x).prev_sample
            traj.append(x.numpy())
        images = ref_vae.decode(x / ref_vae.config.scaling_factor).sample.numpy()
    return sched.timesteps.numpy(), np.stack(traj), images


def _engine_eps(seed_list, base_seed, shape):
    """eps of each seed by the engine's documented key derivation (DESIGN.md "Randomness"):
    normal(fold_in(fold_in(key(base_seed), seed), INIT_TAG)), computed here without the engine."""
    import jax

    base = jax.random.key(base_seed)
    return np.stack([
        np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(base, s), 2**32 - 1), shape))
        for s in seed_list
    ])  # fmt: skip


def test_ddim_cfg_matches_diffusers_step_for_step(tiny):
    """The pretrained config's plan (what `sample` / `evaluate` run) starts from the same noise as
    diffusers (x_T = eps of the seed, `pretrained.init_noise='marginal'`), takes the same timesteps
    (DDIM 'leading', final step to alpha_bar = 1) and equals diffusers' DDIM + CFG loop step for step."""
    ref_dit, ref_vae, cfg = tiny
    plan = pretrained.make_plan(cfg)
    assert plan.shape == (8, 8, 4) and plan.meta["source"] == "gaussian_marginal"
    seed_list, scale, steps = [0, 1, 2], cfg.conditioning.guidance_scale, cfg.grid.num_steps + 1
    out = seeds.sample(plan.denoiser, plan.sampler, plan.grid, seed_list, plan.shape, chunk_size=plan.chunk_size,
                       cond=plan.cond_fn, source=plan.source, base_seed=plan.base_seed, return_trajectory=True)  # fmt: skip
    traj = np.asarray(out.trajectory)  # [S+1, B, h, w, c]
    eps = _engine_eps(seed_list, plan.base_seed, plan.shape)
    start_err = rel_err(traj[0], eps)
    print(f"engine x_T vs the seeds' eps: max relative error {start_err:.1e}")
    assert start_err <= 1e-6  # the same initial noise, not merely the same initial state
    labels = [plan.condition_of(s)["label"] for s in seed_list]
    timesteps, want, images = _reference_ddim(
        ref_dit, ref_vae, eps.transpose(0, 3, 1, 2), labels, scale, steps
    )
    # the same steps: diffusers' timesteps are the engine's grid times as DDPM indices 1000 t - 1,
    # and its last step (set_alpha_to_one) ends at t = 0
    np.testing.assert_array_equal(np.rint(plan.grid[:-1] * 1000 - 1).astype(int), timesteps)
    assert plan.grid[-1] == 0.0 and len(plan.grid) == steps + 1
    errs = [rel_err(traj[i].transpose(0, 3, 1, 2), want[i]) for i in range(1, steps + 1)]
    print(
        "DDIM + CFG tiny DiT, per-step max relative error vs diffusers: "
        + ", ".join(f"{e:.1e}" for e in errs)
    )
    assert max(errs) <= 1e-4
    got = np.asarray(plan.decode(out.samples)).transpose(0, 3, 1, 2)
    err = rel_err(got, images)
    print(f"decoded images max relative error vs diffusers VAE {err:.1e}")
    assert err <= 1e-4
    # the engine's default start (init_noise='sigma') is sigma(t0) eps: a different convention, which
    # diffusers' loop does not reproduce to 1e-4 (sigma(t0) = 0.9983 at t0 = 0.751)
    c = cfg.copy_and_resolve_references()
    c.pretrained.init_noise = "sigma"
    p2 = pretrained.make_plan(c)
    z0 = np.asarray(seeds.sample(p2.denoiser, p2.sampler, p2.grid, seed_list, p2.shape, chunk_size=p2.chunk_size,
                                 cond=p2.cond_fn, source=p2.source, return_trajectory=True).trajectory[0])  # fmt: skip
    sigma0 = float(p2.denoiser.schedule.sigma(plan.grid[0]))
    np.testing.assert_allclose(z0, sigma0 * eps, rtol=1e-6, atol=1e-7)
    assert rel_err(z0, eps) > 1e-3
    c.pretrained.init_noise = "unit"
    with pytest.raises(ValueError, match=r"pretrained.init_noise='unit'; valid: \['sigma', 'marginal'\]"):
        pretrained.make_plan(c)


def test_missing_file_names_source_and_command(tmp_path):
    cfg = dit_xl2.get_config("256")
    cfg.pretrained.denoiser.path = str(tmp_path / "dit_xl2_256.safetensors")
    with pytest.raises(FileNotFoundError) as e:
        pretrained.load_pretrained(cfg)
    msg = str(e.value)
    for part in ("dit_xl2_256.safetensors", "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
                 "python -m diffusion_jax.convert dit DiT-XL-2-256x256.pt"):  # fmt: skip
        assert part in msg, msg
    assert "\n" not in msg
    assert "ddpm-cifar10-32" in ddpm_cifar10.get_config().pretrained.denoiser.published
    with pytest.raises(ValueError, match="variant"):
        dit_xl2.get_config("1024")


def test_sample_and_evaluate_clis_run_the_pretrained_config(tiny, tmp_path):
    """`sample` (subprocess, the README command) and `evaluate` (in-process main path) run the converted
    tiny DiT + VAE from configs/pretrained/dit_xl2.py:tiny; the written images are the engine's
    latents decoded by the VAE, seed for seed."""
    import json
    import subprocess
    import sys

    from diffusion_jax.samplers import seeds as sd

    _, _, cfg = tiny
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = str(tmp_path / "samples")
    args = [sys.executable, "-m", "diffusion_jax.sample", "--config=configs/pretrained/dit_xl2.py:tiny",
            f"--config.pretrained.denoiser.path={cfg.pretrained.denoiser.path}",
            f"--config.pretrained.autoencoder.path={cfg.pretrained.autoencoder.path}",
            "--config.seeds=0-2", f"--config.output_dir={out}", "--config.progress=false"]  # fmt: skip
    r = subprocess.run(args, cwd=root, env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    plan = pretrained.make_plan(cfg)
    want = np.asarray(plan.decode(plan.sample([0, 1, 2])))
    for s in range(3):
        with np.load(sd.sample_path(out, s)) as f:
            assert f["sample"].shape == (16, 16, 3)
            np.testing.assert_array_equal(f["sample"], want[s])
            assert int(f["label"]) == s  # labels 0-9 cycled over the seeds
    # evaluate: FID of seeds 0-7 against reference statistics made by our statistics code, with a
    # converted random-weight Inception; equals the Frechet distance of pytorch-fid's network's features
    pytest.importorskip("pytorch_fid")
    from diffusion_jax.metrics import features, fid, inception, inception_weights
    from tests.test_metrics_fid import frechet_from_features
    from tests.test_metrics_inception import build_random_reference

    net, _, inc, _ = build_random_reference(str(tmp_path))
    ref_u8 = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    r8 = features.feature_statistics(inception.feature_fn(*inception_weights.load_inception(inc)),
                                     features.dataset_batches(8, features.array_reader(ref_u8), 8), batch_size=8)  # fmt: skip
    stats = str(tmp_path / "ref_stats.npz")
    fid.save_statistics(stats, r8.mu, r8.sigma, num_images=8)
    ev = [sys.executable, "-m", "diffusion_jax.evaluate", f"--workdir={tmp_path / 'ev'}", "--progress=false",
          "--config.eval.num_samples=8", "--config.eval.batch_size=8", f"--config.eval.inception_weights={inc}",
          f"--config.eval.reference_stats={stats}", *args[3:6]]  # fmt: skip
    r = subprocess.run(ev, cwd=root, env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    printed = json.loads(r.stdout[r.stdout.index("{") :])
    with open(tmp_path / "ev" / "eval" / "pretrained.json") as f:
        res = json.load(f)
    assert res == printed
    assert res["frac_finite"] == 1.0 and res["nfe"] == 4 and res["guidance_scale"] == 4.0
    fake = np.asarray(plan.decode(plan.sample(list(range(8)))))
    assert np.isclose(res["pixel_mean"], fake.mean(), rtol=1e-5)

    def torch_features(u8):
        x = torch.from_numpy(u8.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        with torch.no_grad():
            return net(x)[0][:, :, 0, 0].numpy().astype(np.float64)

    fake_u8 = np.clip(np.round((fake + 1.0) * 127.5), 0, 255).astype(np.uint8)
    want_fid = frechet_from_features(torch_features(fake_u8), torch_features(ref_u8))
    print(f"pretrained evaluate FID {res['fid']:.6f}, from pytorch-fid's features {want_fid:.6f}")
    assert res["fid"] == pytest.approx(want_fid, rel=1e-3)


def test_evaluate_pretrained_missing_eval_files_fail_before_sampling(tiny, tmp_path):
    """A missing Inception weights or reference statistics file is a one-line error naming the file and
    how to make it, raised before anything is compiled or written."""
    from diffusion_jax import evaluate

    _, _, cfg = tiny
    cfg = cfg.copy_and_resolve_references()
    cfg.eval.inception_weights = str(tmp_path / "no_inception.npz")
    with pytest.raises(FileNotFoundError) as e:
        evaluate.evaluate_pretrained(cfg, str(tmp_path / "ev"))
    msg = str(e.value)
    assert "eval.inception_weights" in msg and "no_inception.npz" in msg and "\n" not in msg
    assert "python -m diffusion_jax.metrics.inception_weights" in msg
    cfg.eval.inception_weights = __file__  # exists; the statistics do not
    cfg.eval.reference_stats = str(tmp_path / "no_stats.npz")
    with pytest.raises(
        FileNotFoundError,
        match=r"eval.reference_stats=.*no_stats.npz.*python -m diffusion_jax.reference_statistics",
    ) as e:
        evaluate.evaluate_pretrained(cfg, str(tmp_path / "ev"))
    assert "\n" not in str(e.value)
    cfg.eval.reference_stats = ""
    with pytest.raises(ValueError, match="need real images"):
        evaluate.evaluate_pretrained(cfg, str(tmp_path / "ev"))
    assert not os.path.exists(tmp_path / "ev")


def test_ddpm_cifar10_tiny_pixel_model_matches_diffusers(tmp_path):
    """configs/pretrained/ddpm_cifar10.py:tiny (a converted random UNet2DModel, unconditional, pixel
    space, no decoder) through the engine's Plan equals diffusers' DDIMScheduler loop step for step."""
    from diffusion_jax.convert import unet

    cj = unet.ddpm_cifar10_config()
    cj.update(sample_size=8, block_out_channels=[128, 128], layers_per_block=1,
              down_block_types=["AttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"])  # fmt: skip
    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(**{k: v for k, v in cj.items() if not k.startswith("_")}).eval()
    randomize(ref, 2, scale=0.05)
    ref.save_pretrained(str(tmp_path / "unet"))
    cfg = ddpm_cifar10.get_config("tiny")
    cfg.pretrained.denoiser.path = str(tmp_path / "unet_tiny.safetensors")
    convert.convert("unet", str(tmp_path / "unet"), cfg.pretrained.denoiser.path)
    plan = pretrained.make_plan(cfg)
    assert plan.decode is None and plan.shape == (8, 8, 3)
    out = seeds.sample(plan.denoiser, plan.sampler, plan.grid, "0-1", plan.shape, source=plan.source,
                       return_trajectory=True)  # fmt: skip
    traj = np.asarray(out.trajectory)
    eps = _engine_eps([0, 1], 0, plan.shape)
    assert rel_err(traj[0], eps) <= 1e-6  # x_T = eps, diffusers' start
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                    beta_end=0.02, clip_sample=False, set_alpha_to_one=True)  # fmt: skip
    sched.set_timesteps(4)
    np.testing.assert_array_equal(np.rint(plan.grid[:-1] * 1000 - 1).astype(int), sched.timesteps.numpy())
    x = torch.from_numpy(eps.transpose(0, 3, 1, 2))
    errs = []
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            x = sched.step(ref(x, t).sample, t, x).prev_sample
            errs.append(rel_err(traj[i + 1].transpose(0, 3, 1, 2), x.numpy()))
    print(
        "DDIM tiny DDPM U-Net, per-step max relative error vs diffusers: "
        + ", ".join(f"{e:.1e}" for e in errs)
    )
    assert max(errs) <= 1e-4
