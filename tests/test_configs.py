"""Config files: every family and variant loads and validates; bad values fail early with an error
naming the field and the valid choices (before anything is built or compiled)."""

import importlib
import sys

import pytest

from diffusion_jax.training.config import validate_config
from tests.test_training_multihost import REPO

sys.path.insert(0, REPO)

FORMULATIONS = ("vp_eps", "vp_v_cosine", "edm", "rf_uniform", "rf_logit_normal", "ot_cfm")
CASES = (
    [
        (f"configs.toy2d.{f}", a)
        for f in FORMULATIONS
        for a in (None, "8gaussians", "checkerboard", "spirals", "tiny")
    ]
    + [(f"configs.fashion_mnist.{f}", a) for f in FORMULATIONS for a in (None, "cond", "tiny", "cond_tiny")]
    + [("configs.fashion_mnist.latent", a) for a in (None, "vp_eps", "edm", "tiny")]
    + [("configs.fashion_mnist.text", a) for a in (None, "text_tiny")]
    + [("configs.cifar10.ddpmpp_vp", a) for a in (None, "deep", "tiny")]
    + [("configs.cifar10.edm", a) for a in (None, "tiny")]
    + [("configs.cifar10.rectified_flow", a) for a in (None, "tiny")]
    + [("configs.imagenet64.edm_adm", a) for a in (None, "tiny")]
    + [("configs.imagenet64.dit", a) for a in (None, "B/4", "tiny")]
)


def _load(module, arg=None):
    return importlib.import_module(module).get_config(arg)


@pytest.mark.parametrize(("module", "arg"), CASES)
def test_every_config_validates(module, arg):
    cfg = _load(module, arg)
    validate_config(cfg)
    assert cfg.data.batch_size % cfg.training.grad_accum == 0


def test_toy_formulations_differ_only_in_objective_and_sampler():
    cfgs = {f: _load(f"configs.toy2d.{f}", "moons").to_dict() for f in FORMULATIONS}
    ref = cfgs["rf_uniform"]
    for f, c in cfgs.items():
        for section in ("model", "data", "training", "mesh", "eval", "seed"):
            assert c[section] == ref[section], (f, section)
    assert len({str(c["objective"]) for c in cfgs.values()}) == len(FORMULATIONS)


def test_paper_configs_hold_the_published_settings():
    edm = _load("configs.cifar10.edm")
    # EMA half-life 0.5 Mimg at batch 512 (Karras et al. 2022, Table 7) as a per-step decay.
    assert edm.training.ema_decays[0] == pytest.approx(0.5 ** (512 / 500_000))
    assert edm.training.num_steps * 512 == pytest.approx(200e6, rel=1e-5)
    sde = _load("configs.cifar10.ddpmpp_vp")
    assert (sde.training.lr, sde.training.warmup_steps, sde.data.batch_size) == (2e-4, 5000, 128)
    assert sde.objective.schedule == "vp_linear" and sde.objective.prediction == "eps"


def _bad(mutate):
    cfg = _load("configs.toy2d.rf_uniform", "tiny")
    mutate(cfg)
    return cfg


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c: setattr(c.training, "optimizer", "sgd"), r"training.optimizer='sgd'.*\['adam', 'adamw'\]"),
        (
            lambda c: setattr(c.training, "lr_schedule", "linear"),
            r"training.lr_schedule.*\['constant', 'cosine'\]",
        ),
        (lambda c: setattr(c.training, "compute_dtype", "float16"), r"training.compute_dtype.*bfloat16"),
        (lambda c: setattr(c.training, "lr", -1.0), r"training.lr=-1.0 must be > 0"),
        (
            lambda c: setattr(c.training, "ema_decays", (0.9, 1.0)),
            r"training.ema_decays\[1\]=1.0 must be < 1",
        ),
        (lambda c: setattr(c.training, "ema_power", -2.0), r"training.ema_power=-2.0 must be > -1"),
        (
            lambda c: setattr(c.training, "grad_accum", 3),
            r"batch_size=32 is not divisible by training.grad_accum=3",
        ),
        (lambda c: setattr(c.training, "ckpt_every", 0), r"training.ckpt_every=0 must be an integer >= 1"),
        (lambda c: c.mesh.update(data=-1, fsdp=-1), r"at most one mesh axis may be -1"),
        (lambda c: setattr(c.sampling, "num_steps", 0), r"sampling.num_steps=0"),
        (
            lambda c: setattr(c.eval, "metrics", ("fidd",)),
            r"eval.metrics\[\]='fidd'.*\['w2', 'mmd', 'sinkhorn', 'fid', 'kid', 'fd_classifier', 'precision_recall'",
        ),
        (lambda c: setattr(c.objective, "label_dropout", 0.1), r"needs a class-conditional model"),
        (lambda c: setattr(c.objective, "weighting", "fancy"), r"weighting"),
        (lambda c: setattr(c.data, "name", "moon"), r"data.name='moon'.*valid"),
        (lambda c: setattr(c.model, "name", "resnet"), r"model.name='resnet'.*valid"),
    ],
)
def test_bad_config_errors_name_the_field(mutate, match):
    with pytest.raises(ValueError, match=match):
        validate_config(_bad(mutate))


def test_bad_config_fails_before_anything_is_built(tmp_path):
    from diffusion_jax.training import loop

    cfg = _bad(lambda c: setattr(c.training, "optimizer", "lamb"))
    with pytest.raises(ValueError, match="training.optimizer"):
        loop.train(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match="valid"):
        _load("configs.toy2d.edm", "swissroll")
    with pytest.raises(ValueError, match="valid"):
        _load("configs.fashion_mnist.edm", "big")
