"""Command-line config handling of train / sample / evaluate (`training.overrides`): dotted flags for
every field including new keys inside `*kwargs` dicts, a run's config.json as --config, and
one-line errors naming the field and the valid choices."""

import json
import os

import ml_collections
import pytest

from diffusion_jax import sample as cli
from diffusion_jax.training import overrides as ov
from tests.test_training_multihost import REPO


def test_nested_kwargs_and_types_on_the_sampling_request():
    argv = ["prog", "--config.grid.kwargs.t_min=0.001", "--config.sampler.kwargs.order=3",
            "--config.sampler.name=unipc", "--config.grid.num_steps=7", "--config.grid_png=true",
            "--config.conditioning.guidance_scale=2", "--config.schedule.kwargs={'beta_max': 10.0}",
            "--workdir=x"]  # fmt: skip
    cfg = ov.config_from_argv(argv, default=cli.get_default_config)
    assert cfg.grid.kwargs.t_min == 0.001 and cfg.sampler.kwargs.order == 3 and cfg.sampler.name == "unipc"
    assert cfg.grid.num_steps == 7 and cfg.grid_png is True and cfg.conditioning.guidance_scale == 2.0
    assert cfg.schedule.kwargs.to_dict() == {"beta_max": 10.0}
    spec = cli.request_overrides(cfg)
    assert spec["grid_kwargs"] == {"t_min": 0.001} and spec["sampler_kwargs"] == {"order": 3}


def test_run_config_json_back_as_config_with_overrides(tmp_path):
    import sys

    sys.path.insert(0, REPO)
    from configs.toy2d import ot_cfm

    cfg = ot_cfm.get_config("tiny")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    argv = ["prog", f"--config={path}", "--config.training.ema_decays=(0.9,0.5)",
            "--config.sampling.grid_kwargs.t_max=0.999", "--config.sampling.sampler_kwargs.order=2"]  # fmt: skip
    back = ov.config_from_argv(argv)
    assert back.training.ema_decays == (0.9, 0.5) and back.eval.metrics == tuple(
        cfg.eval.metrics
    )  # tuples back
    assert back.sampling.grid_kwargs.t_max == 0.999 and back.sampling.sampler_kwargs.order == 2
    py = ov.config_from_argv(["prog", f"--config={os.path.join(REPO, 'configs/toy2d/ot_cfm.py')}:tiny"])
    assert py.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "arg,match",
    [
        (
            "--config.grid.nope=1",
            r"config.grid has no field 'nope'; valid fields: \['kwargs', 'name', 'num_steps'\]",
        ),
        ("--config.grid.num_steps=ten", "config.grid.num_steps='ten' must be an integer"),
        ("--config.grid_png=maybe", "must be true or false"),
        ("--config.seeds", "give a value"),
        ("--config.seeds.x=1", "is a value, not a section"),
    ],
)
def test_bad_flags_name_the_field(arg, match):
    with pytest.raises(ValueError, match=match):
        ov.config_from_argv(["prog", arg], default=cli.get_default_config)


def test_missing_config_file_and_overrides_without_a_base():
    with pytest.raises(FileNotFoundError, match="no such file"):
        ov.config_from_argv(["prog", "--config=nope.py:tiny"])
    with pytest.raises(ValueError, match="need a base config"):
        ov.config_from_argv(["prog", "--config.training.lr=1"])
    assert ov.config_from_argv(["prog"]) is None


def test_split_argv_keeps_absl_flags_apart():
    rest, cfg = ov.split_argv(["p", "--workdir=w", "--config", "c.py", "--config.a=1", "--list"])
    assert rest == ["p", "--workdir=w", "--list"] and cfg == ["--config", "c.py", "--config.a=1"]
    assert ov.pop_config_args(["p", *cfg]) == ("c.py", [("a", "1")])
    got = ov.apply_overrides(
        ml_collections.ConfigDict({"k": {}}), [("k.kwargs.x", "'s'"), ("k.kwargs.y", "a/b")]
    )
    assert got.k.kwargs.x == "s" and got.k.kwargs.y == "a/b"  # a kwargs dict is created; literal or string


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("labels", "0-3", "not class-conditional"),
        ("guidance_scale", 2.0, "needs a conditional model"),
        ("caption", "a cat", "needs a text model"),
        ("sampler_kwargs", {"order": 3}, "unknown option"),
        ("chunk_size", 0, "sampling.chunk_size"),
    ],
)
def test_run_sampling_section_is_validated_before_training(field, value, match):
    import sys

    sys.path.insert(0, REPO)
    from configs.toy2d import rf_uniform
    from diffusion_jax.training.config import validate_config

    cfg = rf_uniform.get_config("tiny")
    validate_config(cfg)
    cfg.sampling[field] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=match):
        validate_config(cfg)
