"""A toy run made entirely of parts from `tests.extensions.my_lab`, named in the config (the module
is listed in `imports`, so the run reopens with them). Test-sized: 4 steps, batch 32."""

import ml_collections

from configs.toy2d import common


def get_config(arg=None):
    del arg
    cfg = common.make("rf_uniform", "moons_tiny")
    cfg.imports = ("tests.extensions.my_lab",)
    cfg.model = ml_collections.ConfigDict({"name": "tiny_net", "dim": 2, "width": 16})
    cfg.objective.update(
        schedule="sub_vp",
        prediction="eps",
        weighting="p2",
        weighting_kwargs={"gamma": 0.5},
        time_distribution="beta",
        coupling="sorted",
        t_eps=1e-3,
    )
    cfg.sampling.sampler = "ralston"
    cfg.training.fast_compile = True
    cfg.eval.num_samples = 64
    return cfg
