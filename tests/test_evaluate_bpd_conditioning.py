"""Bits/dim of a conditional run scores the unconditional model (null label / empty caption); the
evaluation refuses it, before anything is loaded or compiled, when the run never trained that model
(objective.label_dropout = 0), and accepts it otherwise."""

from __future__ import annotations

import sys

import pytest

from diffusion_jax import evaluate as ev
from tests.multiproc import REPO

sys.path.insert(0, REPO)

from configs.fashion_mnist import rf_uniform, text  # noqa: E402

BPD = ("bpd", "bpd_elbo")


@pytest.mark.parametrize(
    "make", [lambda: rf_uniform.get_config("cond_tiny"), lambda: text.get_config("text_tiny")]
)
def test_conditional_run_without_cfg_dropout_refuses_bpd_before_loading(make, tmp_path):
    cfg = make()
    cfg.eval.metrics = BPD
    ev.check_bpd_conditioning(cfg)  # trained with label dropout: the unconditional model exists
    cfg.objective.label_dropout = 0.0
    with pytest.raises(
        ValueError, match=r"eval.metrics has \[.bpd., .bpd_elbo.\].*objective.label_dropout=0"
    ):
        # an empty workdir: the check fires before any checkpoint is read
        ev.evaluate(cfg, str(tmp_path / "no_run"))
    cfg.eval.metrics = ()
    ev.check_bpd_conditioning(cfg)  # no bits/dim asked: nothing to refuse


def test_unconditional_run_is_never_refused():
    cfg = rf_uniform.get_config("tiny")
    cfg.eval.metrics = ("bpd", "bpd_elbo")
    assert not cfg.model.get("num_classes", 0) and cfg.objective.label_dropout == 0
    ev.check_bpd_conditioning(cfg)
