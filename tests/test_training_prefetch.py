"""Host batches prepared ahead in threads (`training.prefetch`): same batches in the same order as
inline, the consumed (not the read-ahead) iterator state, errors at their step; and an exact-OT
(OT-CFM) run trained with prefetching equals, bit for bit, one trained inline then resumed."""

import threading
import time

import jax
import numpy as np
import pytest

from diffusion_jax.couplings import exact_ot_pairing
from diffusion_jax.training import loop
from diffusion_jax.training.prefetch import Inline, Prefetcher, host_batches
from tests.test_faults import tiny_config


class Counter:
    """A data iterator: batch k is {'x': [k]}; state {'step': next k}; optionally fails at `stop`."""

    def __init__(self, stop=None):
        self.k, self.stop = 0, stop

    def __next__(self):
        if self.k == self.stop:
            raise StopIteration
        self.k += 1
        return {"x": np.array([self.k - 1])}

    def get_state(self):
        return {"step": self.k}


def jittery(batch, step):
    """A transform whose duration varies (so threads finish out of order), and which sees its step."""
    time.sleep(0.002 * ((7 * step) % 5))
    return {"x": batch["x"] * 10 + step, "thread": threading.current_thread().name}


@pytest.mark.parametrize("depth,workers", [(1, 1), (3, 3), (4, 2)])
def test_prefetch_gives_inline_batches_and_consumed_state(depth, workers):
    inline = Inline(Counter(), jittery, start=5)
    pre = Prefetcher(Counter(), jittery, start=5, depth=depth, workers=workers)
    try:
        assert pre.get_state() == {"step": 0}
        threads = set()
        for k in range(12):
            a, b = next(inline), next(pre)
            np.testing.assert_array_equal(a["x"], [10 * k + 5 + k])  # batch k at step 5 + k
            np.testing.assert_array_equal(b["x"], a["x"])
            threads.add(b["thread"])
            assert pre.get_state() == inline.get_state() == {"step": k + 1}  # not the read-ahead
        assert all(t.startswith("prefetch") for t in threads) and len(threads) <= workers
    finally:
        pre.close()


def test_prefetch_errors_surface_at_their_step():
    def fails_at_3(batch, step):
        if step == 3:
            raise ValueError("bad batch at step 3")
        return batch

    with host_batches(Counter(), fails_at_3, 0, depth=2) as pre:
        assert [int(next(pre)["x"][0]) for _ in range(3)] == [0, 1, 2]
        for _ in range(2):  # and stays failed
            with pytest.raises(ValueError, match="bad batch at step 3"):
                next(pre)
    with host_batches(Counter(stop=2), lambda b, s: b, 0, depth=3) as pre:
        assert len(list(pre)) == 2  # StopIteration of the data iterator ends the stream
    pre = Prefetcher(Counter(), lambda b, s: b, 0, depth=1)
    t0 = time.perf_counter()
    pre.close()  # the reader is blocked on the full queue: close still returns at once
    assert time.perf_counter() - t0 < 5 and not pre._reader.is_alive()
    with pytest.raises(ValueError, match="depth >= 1 and workers >= 1"):
        Prefetcher(Counter(), jittery, 0, depth=0)
    assert isinstance(host_batches(Counter(), jittery, 0, depth=0), Inline)


def _ot_cfm_config(num_steps, prefetch):
    cfg = tiny_config(num_steps)
    cfg.objective.coupling = "ot_exact"
    cfg.training.prefetch = prefetch
    cfg.training.ckpt_every = 100
    return cfg


def test_exact_ot_run_with_prefetch_equals_inline_then_resumed(tmp_path):
    """8 steps of OT-CFM with 3 batches paired ahead in 3 threads == 4 steps inline, then resumed
    to 8 with prefetching (bitwise: params, EMA, optimizer state); and the paired noise the step sees
    is the exact OT permutation (checked against scipy's assignment on the batch)."""
    from scipy.optimize import linear_sum_assignment

    dev = jax.devices()[:1]
    full = loop.train(_ot_cfm_config(8, 3), str(tmp_path / "a"), progress=False, devices=dev)
    part = loop.train(_ot_cfm_config(4, 0), str(tmp_path / "b"), progress=False, devices=dev)
    assert part.step == 4
    rest = loop.train(_ot_cfm_config(8, 2), str(tmp_path / "b"), progress=False, devices=dev)
    assert full.step == rest.step == 8
    for a, b in zip(
        jax.tree.leaves((full.state.params, full.state.ema, full.state.opt_state)),
        jax.tree.leaves((rest.state.params, rest.state.ema, rest.state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the pairing the loop applies: minimal total squared distance over all permutations
    transform = loop._host_batch_transform(_ot_cfm_config(8, 3))
    paired = transform({"x": np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)}, 0)
    x, noise = paired["x"].astype(np.float64), paired["noise"].astype(np.float64)
    cost = ((x[:, None] - noise[None]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    assert ((x - noise) ** 2).sum() == pytest.approx(cost[r, c].sum(), rel=1e-9)
    assert sorted(exact_ot_pairing(x, noise)) == list(range(64))


def test_exact_ot_solvers_agree_and_auto_picks_by_batch_size(monkeypatch):
    """Both exact solvers reach scipy's minimal assignment cost; 'auto' uses scipy up to
    LSA_MAX_BATCH and the network simplex above (checked by which solver is called)."""
    import ot
    from scipy.optimize import linear_sum_assignment

    from diffusion_jax import couplings

    rng = np.random.default_rng(1)
    for n in (8, couplings.LSA_MAX_BATCH + 32):
        x, y = rng.normal(size=(n, 2)) * 3, rng.normal(size=(n, 2))
        cost = ((x[:, None] - y[None]) ** 2).sum(-1)
        r, c = linear_sum_assignment(cost)
        for method in couplings.EXACT_METHODS:
            perm = couplings.exact_ot_pairing(x, y, method)
            assert sorted(perm) == list(range(n))
            assert cost[np.arange(n), perm].sum() == pytest.approx(cost[r, c].sum(), rel=1e-12)
    calls = []
    real_emd = ot.emd
    monkeypatch.setattr(ot, "emd", lambda *a, **k: calls.append(len(a[0])) or real_emd(*a, **k))
    for n in (couplings.LSA_MAX_BATCH, couplings.LSA_MAX_BATCH + 1):
        couplings.exact_ot_pairing(rng.normal(size=(n, 2)), rng.normal(size=(n, 2)))
    assert calls == [couplings.LSA_MAX_BATCH + 1]
    with pytest.raises(ValueError, match=r"method='hungarian' unknown; valid: \['auto', 'emd', 'lsa'\]"):
        couplings.exact_ot_pairing(x, y, "hungarian")
