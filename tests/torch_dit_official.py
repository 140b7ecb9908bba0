"""The official DiT network (Peebles & Xie 2023) in PyTorch, as a parity reference for the converter.

Written from the paper (Sec. 3.2, Fig. 3) and the layout of the published `models.py` state dict
(`x_embedder.proj`, `pos_embed`, `t_embedder.mlp`, `y_embedder.embedding_table`, `blocks.i.{attn.qkv,
attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}`, `final_layer.{adaLN_modulation.1, linear}`); the
facebookresearch code itself is not installed here. Timestep frequencies exp(-log(1e4) k / half),
[cos, sin]; LayerNorms eps 1e-6 without affine; GELU(tanh); patches unpatchified as (p, q, c).
"""

import math

import numpy as np
import torch
from torch import nn


def _sincos(dim, grid):
    def axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([axis(dim // 2, g[0]), axis(dim // 2, g[1])], axis=1)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def attention(self, x):
        b, n, c = x.shape
        qkv = self.attn.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        w = (qkv[0] @ qkv[1].transpose(-2, -1)) / math.sqrt(c // self.heads)
        out = (w.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, n, c)
        return self.attn.proj(out)

    def forward(self, x, c):
        s1, c1, g1, s2, c2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1[:, None] * self.attention(self.norm1(x) * (1 + c1[:, None]) + s1[:, None])
        h = self.norm2(x) * (1 + c2[:, None]) + s2[:, None]
        return x + g2[:, None] * self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(h), approximate="tanh"))


class OfficialDiT(nn.Module):
    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 num_classes=1000, learn_sigma=True):  # fmt: skip
        super().__init__()
        d, p = hidden_size, patch_size
        self.p, self.out_channels = p, in_channels * (2 if learn_sigma else 1)
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, d, p, stride=p)
        grid = input_size // p
        self.pos_embed = nn.Parameter(torch.from_numpy(_sincos(d, grid)).float()[None], requires_grad=False)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, d)
        self.blocks = nn.ModuleList([Block(d, num_heads) for _ in range(depth)])
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(d, p * p * self.out_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, t, y):
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        c = self.t_embedder.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        c = c + self.y_embedder.embedding_table(y)
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(self.final_layer.norm_final(x) * (1 + scale[:, None]) + shift[:, None])
        n, g, p, o = x.shape[0], int(x.shape[1] ** 0.5), self.p, self.out_channels
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(n, g, g, p, p, o))
        return x.reshape(n, o, g * p, g * p)
