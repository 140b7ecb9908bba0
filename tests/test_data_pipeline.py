"""grain pipeline: shuffling, per-process shards, exact resume, dequantization/flip, config validation.

Most tests feed an in-memory source whose ``label`` is the example's index, so orders and shards can be
checked exactly; TFDS itself is exercised under ``tfds.testing.mock_data`` (fake data, no files) here and
on the real Fashion-MNIST files in ``test_data_fashion_mnist.py``.
"""

import json
import math

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.data import pipeline, toy2d


class ArraySource:
    """Random-access source: element ``i`` = ``{'image': images[i], 'label': i}``."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": i}


def _random_images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def _cfg(batch_size, **kw):
    kw.setdefault("prepare", False)
    return pipeline.default_data_config("tfds", "fashion_mnist", batch_size, **kw)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_shuffle_is_seeded_and_each_epoch_is_a_new_permutation():
    src = ArraySource(_random_images(48))
    cfg = _cfg(8, num_epochs=3)
    a = list(pipeline.make_iterator(cfg, seed=1, source=src))
    b = list(pipeline.make_iterator(cfg, seed=1, source=src))
    c = list(pipeline.make_iterator(cfg, seed=2, source=src))
    assert len(a) == 18
    for x, y in zip(a, b, strict=True):  # Same seed: same order and same dequantization noise.
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["image"], y["image"])
    epochs = np.concatenate([x["label"] for x in a]).reshape(3, 48)
    for e in range(3):
        np.testing.assert_array_equal(np.sort(epochs[e]), np.arange(48))  # Each example once per epoch.
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(48))
    assert not np.array_equal(epochs[0], np.concatenate([x["label"] for x in c[:6]]))
    # A fixed shuffle_seed pins the order whatever the run seed; the run seed still drives the noise.
    d = list(pipeline.make_iterator(_cfg(8, num_epochs=1, shuffle_seed=7), seed=1, source=src))
    e = list(pipeline.make_iterator(_cfg(8, num_epochs=1, shuffle_seed=7), seed=2, source=src))
    np.testing.assert_array_equal(d[0]["label"], e[0]["label"])
    assert not np.array_equal(d[0]["image"], e[0]["image"])
    f = list(pipeline.make_iterator(_cfg(8, num_epochs=1, shuffle=False), seed=1, source=src))
    np.testing.assert_array_equal(np.concatenate([x["label"] for x in f]), np.arange(48))


def test_process_shards_are_disjoint_covering_and_concatenate_to_the_global_batch():
    src = ArraySource(_random_images(48))
    cfg = _cfg(12, num_epochs=2, random_flip=True)
    single = list(pipeline.make_iterator(cfg, seed=4, source=src))
    shards = [
        list(pipeline.make_iterator(cfg, process_index=p, process_count=3, seed=4, source=src))
        for p in range(3)
    ]
    assert len(single) == 8 and all(len(s) == 8 for s in shards)
    for k in range(8):
        assert all(s[k]["image"].shape == (4, 28, 28, 1) for s in shards)
        for key in ("image", "label"):  # Bit-identical, noise included: randomness follows the global index.
            np.testing.assert_array_equal(np.concatenate([s[k][key] for s in shards]), single[k][key])
    for epoch in range(2):
        sets = [
            set(np.concatenate([b["label"] for b in s[4 * epoch : 4 * epoch + 4]]).tolist()) for s in shards
        ]
        assert all(len(x) == 16 for x in sets)
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        assert set().union(*sets) == set(range(48))


def test_state_restore_resumes_with_exactly_the_same_batches():
    src = ArraySource(_random_images(40))
    cfg = _cfg(6, random_flip=True, num_threads=2, prefetch=3)  # Infinite, crosses epoch boundaries.
    it = pipeline.make_iterator(cfg, process_index=1, process_count=2, seed=9, source=src)
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # Must survive JSON (saved with Orbax).
    expected = _take(it, 12)
    fresh = pipeline.make_iterator(cfg, process_index=1, process_count=2, seed=9, source=src)
    fresh.set_state(state)
    got = _take(fresh, 12)
    it.set_state(state)  # Rewinding a used iterator works too.
    again = _take(it, 12)
    for x, y, z in zip(expected, got, again, strict=True):
        for key in ("image", "label"):
            np.testing.assert_array_equal(x[key], y[key])
            np.testing.assert_array_equal(x[key], z[key])
    with pytest.raises(ValueError, match="toy2d"):
        fresh.set_state({"source": "toy2d", "step": 3})


def test_uniform_dequantization_range_and_moments():
    values = np.arange(256, dtype=np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (256, 28, 28, 1)).copy()
    src = ArraySource(images)
    batch = next(pipeline.make_iterator(_cfg(256, shuffle=False), seed=0, source=src))
    y = batch["image"].astype(np.float64)
    assert y.dtype == np.float64 and y.min() >= -1.0 and y.max() < 1.0
    u = (y + 1) * 128 - values[batch["label"]][:, None, None, None]  # Should be U[0, 1).
    n = u.size
    assert u.min() >= -1e-4 and u.max() < 1 + 1e-4
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)  # Var of (u - 1/2)^2 is 1/180.
    # Without dequantization: exactly x / 127.5 - 1 (0 -> -1, 255 -> +1).
    plain = next(pipeline.make_iterator(_cfg(256, shuffle=False, dequantize=False), source=src))
    np.testing.assert_allclose(plain["image"][:, 0, 0, 0], values / 127.5 - 1, atol=1e-7)
    assert plain["image"].min() == -1.0 and plain["image"].max() == 1.0


def test_random_flip_mirrors_about_half_of_the_images():
    cols = np.arange(28, dtype=np.uint8) * 9
    images = np.broadcast_to(cols[None, None, :, None], (400, 28, 28, 1)).copy()
    batch = next(
        pipeline.make_iterator(
            _cfg(400, random_flip=True, dequantize=False), seed=3, source=ArraySource(images)
        )
    )
    x = batch["image"]
    ref = (cols / 127.5 - 1)[None, None, :, None]
    same = (np.abs(x - ref) < 1e-6).all(axis=(1, 2, 3))
    flipped = (np.abs(x - ref[:, :, ::-1]) < 1e-6).all(axis=(1, 2, 3))
    assert np.all(same ^ flipped)
    assert abs(flipped.mean() - 0.5) < 5 * 0.5 / math.sqrt(400)


def test_pad_to_32_keeps_the_image_centred_on_a_black_border():
    images = _random_images(4)
    cfg = _cfg(4, image_size=32, resize="pad", dequantize=False, shuffle=False)
    x = next(pipeline.make_iterator(cfg, source=ArraySource(images)))["image"]
    assert x.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(x[:, 2:30, 2:30], images / 127.5 - 1, atol=1e-7)
    assert (x[:, :2] == -1).all() and (x[:, 30:] == -1).all() and (x[:, :, :2] == -1).all()


@pytest.mark.parametrize(
    ("name", "shape", "classes"), [("fashion_mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10)]
)
def test_tfds_pipeline_under_mock_data(name, shape, classes, tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        cfg = pipeline.default_data_config(
            "tfds", name, 8, data_dir=str(tmp_path), prepare=False, random_flip=True
        )
        it = pipeline.make_iterator(cfg, seed=0)
        first = _take(it, 2)
        state = it.get_state()
        nxt = _take(it, 3)  # Crosses the 24-example epoch boundary.
        it.set_state(state)
        again = _take(it, 3)
    assert first[0]["image"].shape == (8, *shape) and first[0]["image"].dtype == np.float32
    assert first[0]["label"].dtype == np.int32
    labels = np.concatenate([b["label"] for b in first + nxt])
    assert labels.min() >= 0 and labels.max() < classes
    images = np.concatenate([b["image"] for b in first + nxt])
    assert images.min() >= -1 and images.max() < 1
    for x, y in zip(nxt, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])


class _Untouchable:
    def __len__(self):
        raise AssertionError("the source was opened before the config was validated")

    __getitem__ = __len__


@pytest.mark.parametrize(
    ("overrides", "kwargs", "match"),
    [
        ({"name": "imagenet"}, {}, "cifar10.*fashion_mnist.*imagenet64.*mnist"),
        ({"split": "validation"}, {}, r"\['train', 'test'\]"),
        ({"image_size": 32}, {}, "data.resize"),
        ({"num_channels": 3}, {}, "num_channels"),
        ({"batch_size": 10}, {"process_count": 4}, "divisible by process_count=4"),
        ({"resize": "nearest"}, {}, "bilinear"),
        ({"num_epochs": -1}, {}, "num_epochs"),
        ({"shuffle_seed": 2**32}, {}, "shuffle_seed"),
        ({"source": "hf"}, {}, "toy2d.*analytic.*tfds.*latents"),
        ({}, {"process_index": 2, "process_count": 2}, "process_index"),
    ],
)
def test_bad_configs_raise_before_any_work(overrides, kwargs, match):
    cfg = _cfg(8)
    with cfg.unlocked():
        for k, v in overrides.items():
            cfg[k] = v
    with pytest.raises(ValueError, match=match):
        pipeline.make_iterator(cfg, source=_Untouchable(), **kwargs)


def test_config_helpers_reject_unknown_names_and_fields():
    with pytest.raises(ValueError, match="8gaussians.*moons.*spirals"):
        pipeline.default_data_config("toy2d", "swissroll")
    with pytest.raises(ValueError, match="valid fields"):
        pipeline.default_data_config("toy2d", "moons", 8, batchsize=4)
    cfg = pipeline.default_data_config("toy2d", "moons")
    with cfg.unlocked():
        cfg.shufle = True
    with pytest.raises(ValueError, match="unknown fields.*shufle"):
        pipeline.make_iterator(cfg)
    tf_cfg = pipeline.default_data_config("tfds", "cifar10", 4)
    assert pipeline.example_spec(tf_cfg)["image"] == ((32, 32, 3), np.float32)


def test_toy_iterator_batch_depends_only_on_seed_step_and_process():
    cfg = pipeline.default_data_config("toy2d", "8gaussians", 8, pair_with="gaussian")
    it = pipeline.make_iterator(cfg, seed=5)
    batches = _take(it, 5)
    assert batches[0]["x"].shape == (8, 2) and batches[0]["x"].dtype == np.float32
    assert it.get_state() == {"source": "toy2d", "global_batch_size": 8, "step": 5}
    jump = pipeline.make_iterator(cfg, seed=5)
    jump.set_state(json.loads(json.dumps({"source": "toy2d", "global_batch_size": 8, "step": 3})))
    np.testing.assert_array_equal(next(jump)["x"], batches[3]["x"])
    halves = [pipeline.make_iterator(cfg, process_index=p, process_count=2, seed=5) for p in range(2)]
    for k in range(3):
        parts = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), batches[k]["x"])
        np.testing.assert_array_equal(np.concatenate([p["x0"] for p in parts]), batches[k]["x0"])
    other = next(pipeline.make_iterator(cfg, seed=6))
    assert not np.allclose(other["x"], batches[0]["x"])
    # Element r of batch k is sample_fn(fold_in(fold_in(key(seed), k), r), 1): check one element directly.
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(5), 2), 7)
    one = jax.jit(toy2d.sample_8gaussians, static_argnums=1)(key, 1)[0]
    np.testing.assert_allclose(batches[2]["x"][7], one, rtol=1e-6)


def test_sampler_iterator_accepts_any_sampler():
    fn = lambda key, n: 2.0 * jax.random.normal(key, (n, 3)) + 1.0
    it = pipeline.make_sampler_iterator(fn, batch_size=4096, seed=0)
    x = next(it)["x"].astype(np.float64)
    assert x.shape == (4096, 3)
    np.testing.assert_allclose(x.mean(0), 1.0, atol=5 * 2 / 64)
    np.testing.assert_allclose(x.std(0), 2.0, atol=5 * 2 / math.sqrt(2 * 4096))
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_sampler_iterator(fn, batch_size=5, process_count=2)


def test_example_spec_matches_the_batches():
    src = ArraySource(_random_images(8))
    cfg = _cfg(4, image_size=32, resize="pad")
    batch = next(pipeline.make_iterator(cfg, source=src))
    spec = pipeline.example_spec(cfg)
    assert spec == {"image": ((32, 32, 1), np.float32), "label": ((), np.int32)}
    for key, (shape, dtype) in spec.items():
        assert batch[key].shape == (4, *shape) and batch[key].dtype == dtype
    toy = pipeline.default_data_config("toy2d", "moons", 4, pair_with="8gaussians")
    assert pipeline.example_spec(toy) == {"x": ((2,), np.float32), "x0": ((2,), np.float32)}


def test_analytic_source_draws_the_mixture_and_any_sampler_works():
    from diffusion_jax import analytic

    cfg = pipeline.default_data_config("analytic", "gmm_2d_ring", 4096)
    assert pipeline.example_spec(cfg) == {"x": ((2,), np.float32)}
    x = next(pipeline.make_iterator(cfg, seed=0))["x"].astype(np.float64)
    mean, cov = (np.asarray(a, np.float64) for a in analytic.gmm_2d_ring().moments())
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / 4096))
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.15)  # ~5 SE of a 4096-sample covariance.
    with pytest.raises(ValueError, match="gmm_1d.*gmm_2d_ring"):
        pipeline.default_data_config("analytic", "ring")
    # An unhashable sampler (bound method of a pytree dataclass) is fine too.
    it = pipeline.make_sampler_iterator(analytic.gmm_1d().sample, batch_size=8, seed=1)
    assert next(it)["x"].shape == (8, 1)


def test_unprepared_external_dataset_explains_how_to_build_it(tmp_path):
    cfg = pipeline.default_data_config("tfds", "cifar10", 8, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
        pipeline.make_iterator(cfg)
    local = pipeline.default_data_config("tfds", "fashion_mnist", 8, data_dir=str(tmp_path), prepare=False)
    with pytest.raises(FileNotFoundError, match="data.prepare=True"):
        pipeline.make_iterator(local)


@pytest.mark.parametrize("source", ["tfds", "toy2d"])
def test_state_of_a_two_process_run_resumes_a_one_process_run(source):
    src = ArraySource(_random_images(40))
    if source == "tfds":
        cfg, kw = _cfg(8, random_flip=True), {"source": src}
        keys = ("image", "label")
    else:
        cfg, kw = pipeline.default_data_config("toy2d", "moons", 8), {}
        keys = ("x",)
    two = [pipeline.make_iterator(cfg, process_index=p, process_count=2, seed=2, **kw) for p in range(2)]
    for it in two:
        _take(it, 7)
    state = json.loads(json.dumps(two[1].get_state()))
    one = pipeline.make_iterator(cfg, seed=2, **kw)
    one.set_state(state)
    for _ in range(3):
        parts, whole = [next(it) for it in two], next(one)
        for key in keys:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    other = pipeline.make_iterator(pipeline.default_data_config(**{**cfg, "batch_size": 16}), seed=2, **kw)
    with pytest.raises(ValueError, match="batch_size=8"):
        other.set_state(state)
