"""Parameter counts of the published configs, computed with `nnx.eval_shape` (nothing allocated).

Reference figures:
- DiT (Peebles & Xie 2023, Table 1: 33M / 130M / 458M / 675M, which are the trainable counts
  rounded: e.g. B/2 has 130,315,808 trainable + 196,608 fixed position entries). Exact integers are those of the
  official code (facebookresearch/DiT `models.py`, 32x32x4 latents, learn_sigma=True, 1000 classes +
  1 null row, fixed position table counted as it is an `nn.Parameter`): XL/2 = 675,129,632. The other
  sizes' integers come from the closed form of that code's layer list (below), which reproduces XL/2.
- score_sde DDPM++ cont. (VP) and NCSN++ cont. (VE), CIFAR-10, and ADM ImageNet-64 as used in EDM:
  EDM (Karras et al. 2022) Table 7 lists 61.80M / 62.76M / 295.90M; the exact integers come from the
  layer lists of yang-song/score_sde `models/ncsnpp.py` and NVlabs/edm `DhariwalUNet`, walked by the
  independent arithmetic below.
"""

import pytest

from configs.models import adm_imagenet64, ddpmpp_cifar10, dit, mlp, ncsnpp_cifar10
from diffusion_jax.models import layers
from diffusion_jax.models.functional import abstract_split


def count(cfg, trainable_only=False):
    _, params, rest = abstract_split(cfg)
    return layers.count_params(params) + (0 if trainable_only else layers.count_params(rest))


def dit_reference(hidden, depth, patch, in_ch=4, out_ch=8, classes=1000, res=32):
    d, p = hidden, patch
    n = in_ch * p * p * d + d  # patch embedding conv
    n += 256 * d + d + d * d + d  # timestep MLP
    n += (classes + 1) * d  # label table with null row
    n += depth * (18 * d * d + 15 * d)  # qkv, proj, fc1, fc2, adaLN per block
    n += d * p * p * out_ch + p * p * out_ch + 2 * d * d + 2 * d  # final layer
    return n + (res // p) ** 2 * d  # fixed position table


def ncsnpp_reference(
    nf=128, mult=(1, 2, 2, 2), nrb=4, attn=(16,), res=32, ch=3, residual_input=False, fourier=False
):
    lin = lambda a, b: a * b + b
    conv = lambda a, b, k: a * b * k * k + b
    ed = 2 * nf if fourier else nf
    n = (nf if fourier else 0) + lin(ed, 4 * nf) + lin(4 * nf, 4 * nf)

    def rb(i, o=None, resample=False):
        o = o or i
        return (
            2 * i
            + conv(i, o, 3)
            + lin(4 * nf, o)
            + 2 * o
            + conv(o, o, 3)
            + (conv(i, o, 1) if i != o or resample else 0)
        )

    at = lambda c: 2 * c + 4 * lin(c, c)
    rs = [res // 2**i for i in range(len(mult))]
    n += conv(ch, nf, 3)
    hs, i, pc = [nf], nf, ch
    for lvl, m in enumerate(mult):
        for _ in range(nrb):
            n += rb(i, nf * m)
            i = nf * m
            n += at(i) if rs[lvl] in attn else 0
            hs.append(i)
        if lvl != len(mult) - 1:
            n += rb(i, resample=True)
            if residual_input:
                n += conv(pc, i, 3)
                pc = i
            hs.append(i)
    n += rb(i) + at(i) + rb(i)
    for lvl in reversed(range(len(mult))):
        for _ in range(nrb + 1):
            n += rb(i + hs.pop(), nf * mult[lvl])
            i = nf * mult[lvl]
        n += at(i) if rs[lvl] in attn else 0
        n += rb(i, resample=True) if lvl else 0
    return n + 2 * i + conv(i, ch, 3)


def adm_edm_reference(res=64, mc=192, mult=(1, 2, 3, 4), nb=3, attn=(32, 16, 8), classes=1000):
    lin = lambda a, b: a * b + b
    conv = lambda a, b, k: a * b * k * k + b
    e = 4 * mc
    n = lin(mc, e) + lin(e, e) + classes * e

    def blk(i, o, att=False):
        return (
            2 * i
            + conv(i, o, 3)
            + lin(e, 2 * o)
            + 2 * o
            + conv(o, o, 3)
            + (conv(i, o, 1) if i != o else 0)
            + (2 * o + conv(o, 3 * o, 1) + conv(o, o, 1) if att else 0)
        )

    c = mc * mult[0]
    n += conv(3, c, 3)
    skips = [c]
    for lvl, m in enumerate(mult):
        if lvl:
            n += blk(c, c)
            skips.append(c)
        for _ in range(nb):
            n += blk(c, mc * m, (res >> lvl) in attn)
            c = mc * m
            skips.append(c)
    n += blk(c, c, True) + blk(c, c)
    for lvl, m in reversed(list(enumerate(mult))):
        if lvl != len(mult) - 1:
            n += blk(c, c)
        for _ in range(nb + 1):
            n += blk(c + skips.pop(), mc * m, (res >> lvl) in attn)
            c = mc * m
    return n + 2 * c + conv(c, 3, 3)


DIT_PUBLISHED_M = {"S": 33, "B": 130, "L": 458, "XL": 675}


@pytest.mark.parametrize("size", ["S", "B", "L", "XL"])
def test_dit_param_counts(size):
    cfg = dit.get_config(f"{size}/2")
    ours = count(cfg)
    trainable = count(cfg, trainable_only=True)
    ref = dit_reference(cfg.hidden_size, cfg.depth, 2)
    print(
        f"DiT-{size}/2: ours {ours:,} (trainable {trainable:,})  reference code {ref:,}  "
        f"paper Table 1 {DIT_PUBLISHED_M[size]}M"
    )
    assert ours == ref
    # Table 1 rounds the trainable count (the fixed position table excluded): B/2 is 130.3M trainable
    assert trainable == ref - (32 // 2) ** 2 * cfg.hidden_size
    assert round(trainable / 1e6) == DIT_PUBLISHED_M[size]
    if size == "XL":
        assert ours == 675_129_632


def test_dit_patch_sizes_change_counts_as_the_reference():
    for p in (4, 8):
        cfg = dit.get_config(f"S/{p}")
        assert count(cfg) == dit_reference(384, 12, p)


@pytest.mark.parametrize(
    "name,cfg,ref,published_m",
    [
        ("DDPM++ cont. (VP)", ddpmpp_cifar10.get_config(), ncsnpp_reference(), 61.80),
        (
            "NCSN++ cont. (VE)",
            ncsnpp_cifar10.get_config(),
            ncsnpp_reference(residual_input=True, fourier=True),
            62.76,
        ),
        ("ADM ImageNet-64 (EDM)", adm_imagenet64.get_config(), adm_edm_reference(), 295.90),
    ],
)
def test_unet_param_counts(name, cfg, ref, published_m):
    ours = count(cfg)
    print(f"{name}: ours {ours:,}  reference layer list {ref:,}  EDM Table 7 {published_m}M")
    assert ours == ref
    assert round(ours / 1e6, 2) == published_m


def test_cfm_mlp_count():
    # torchcfm MLP(dim=2, w=64, time_varying=True): (3*64+64) + 2*(64*64+64) + (64*2+2)
    assert count(mlp.get_config("cfm")) == 256 + 2 * 4160 + 130 == 8706
