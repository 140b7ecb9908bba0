"""Shared machinery of the converters: key rules, strict checking, and the converted file.

A converter is a list of `Rule`s, each tying one of our parameters (a dotted NNX state path such as
`blocks.0.attn.qkv.kernel`) to one or more tensors of a published PyTorch state dict and a layout
transform. The same rules convert in both directions, so export is the exact inverse of import
(transposes, concatenations and splits only: round trips are bitwise).

Transforms (PyTorch layout -> ours):
  linear      W [out, in] -> kernel [in, out] (transpose)
  conv        W [O, I, kh, kw] -> kernel [kh, kw, I, O] (NHWC / HWIO)
  copy        unchanged (biases, norm scales, embedding tables)
  cat_linear  several W_i [out_i, in] -> kernel [in, sum out_i] (e.g. separate q, k, v -> fused qkv)
  cat         several b_i [n_i] -> [sum n_i]
  unbatch     [1, ...] -> [...] (DiT's stored position table)

A rule may also carry `reshape`: the transformed array is reshaped to it, e.g. a [D, 3D] qkv kernel
to our head-major [D, 3, H, D/H] (DiT) and its [3D] bias to [3, H, D/H]; export flattens back (a
kernel to [its first dim, -1], a vector to [-1]) before inverting the transform.

The converted file is a safetensors file of our flattened state with JSON metadata (the model
config, the source layout, the source file's SHA-256, extras such as latent scale factors) and a
`<file>.sha256` sidecar in `sha256sum` format; loading verifies the checksum.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from diffusion_jax.convert import safetensors_io
from diffusion_jax.metrics.inception_weights import sha256_of as sha256_file  # one file-hash helper

FORMAT = "diffusion_jax.converted/1"
KINDS = ("linear", "conv", "copy", "cat_linear", "cat", "unbatch")


class ConversionError(ValueError):
    """A published file does not match the layout a converter expects (names every bad key)."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """Our parameter `ours` <- published tensors `theirs` through transform `kind` (see module doc)."""

    ours: str
    theirs: tuple[str, ...]
    kind: str
    reshape: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Rule.kind={self.kind!r} unknown; valid: {KINDS}")
        if len(self.theirs) != 1 and self.kind not in ("cat", "cat_linear"):
            raise ValueError(f"Rule {self.ours}: kind {self.kind!r} takes exactly one source tensor")


def rule(ours: str, theirs: str | tuple[str, ...], kind: str = "copy", reshape=None) -> Rule:
    theirs = (theirs,) if isinstance(theirs, str) else tuple(theirs)
    return Rule(ours, theirs, kind, None if reshape is None else tuple(int(n) for n in reshape))


def linear(ours_prefix: str, theirs_prefix: str, *, bias: bool = True, out_shape=None) -> list[Rule]:
    """A dense layer: `<ours>.kernel` / `.bias` <- `<theirs>.weight` / `.bias`. out_shape: our output
    axes when they are not flat (kernel [in, *out_shape], bias [*out_shape]), e.g. (3, H, D/H)."""
    return _dense(f"{ours_prefix}.kernel", f"{ours_prefix}.bias", (f"{theirs_prefix}.weight",),
                  (f"{theirs_prefix}.bias",) if bias else None, out_shape)  # fmt: skip


def _dense(kernel, bias, weights, biases, out_shape) -> list[Rule]:
    kind = "linear" if len(weights) == 1 else "cat_linear"
    ks = None if out_shape is None else (-1, *out_shape)
    out = [rule(kernel, weights, kind, ks)]
    if biases:
        out.append(rule(bias, biases, "copy" if len(biases) == 1 else "cat", out_shape))
    return out


def conv(ours_prefix: str, theirs_prefix: str) -> list[Rule]:
    """A convolution: `<ours>.kernel` / `.bias` <- `<theirs>.weight` / `.bias`."""
    return [
        rule(f"{ours_prefix}.kernel", f"{theirs_prefix}.weight", "conv"),
        rule(f"{ours_prefix}.bias", f"{theirs_prefix}.bias"),
    ]


def norm(ours_prefix: str, theirs_prefix: str) -> list[Rule]:
    """GroupNorm / LayerNorm with affine: `scale` / `bias` <- `weight` / `bias`."""
    return [
        rule(f"{ours_prefix}.scale", f"{theirs_prefix}.weight"),
        rule(f"{ours_prefix}.bias", f"{theirs_prefix}.bias"),
    ]


def fused_qkv(
    ours_prefix: str, theirs: tuple[str, str, str], *, bias: bool = True, out_shape=None
) -> list[Rule]:
    """Separate q / k / v linears (`theirs` prefixes) -> our fused `qkv` linear (out_shape: as `linear`)."""
    return _dense(f"{ours_prefix}.kernel", f"{ours_prefix}.bias", tuple(f"{t}.weight" for t in theirs),
                  tuple(f"{t}.bias" for t in theirs) if bias else None, out_shape)  # fmt: skip


def _forward(r: Rule, arrays: list[np.ndarray]) -> np.ndarray:
    a = _transform(r, arrays)
    if r.reshape is None:
        return a
    if a.ndim and r.reshape[0] == -1 and int(np.prod(r.reshape[1:])) != a.shape[-1]:
        raise ValueError("reshape does not fit")
    return a.reshape(r.reshape if r.reshape[0] != -1 else (a.shape[0], *r.reshape[1:]))


def _transform(r: Rule, arrays: list[np.ndarray]) -> np.ndarray:
    if r.kind == "linear":
        return arrays[0].T
    if r.kind == "conv":
        return arrays[0].transpose(2, 3, 1, 0)
    if r.kind == "copy":
        return arrays[0]
    if r.kind == "cat_linear":
        return np.concatenate([a.T for a in arrays], axis=1)
    if r.kind == "cat":
        return np.concatenate(arrays, axis=0)
    if arrays[0].shape[:1] != (1,):
        raise ValueError("unbatch expects a leading axis of size 1")
    return arrays[0][0]


def _inverse(r: Rule, a: np.ndarray) -> list[np.ndarray]:
    if r.reshape is not None:
        a = a.reshape(a.shape[0], -1) if r.kind in ("linear", "cat_linear") else a.reshape(-1)
    if r.kind == "linear":
        return [a.T]
    if r.kind == "conv":
        return [a.transpose(3, 2, 0, 1)]
    if r.kind == "copy":
        return [a]
    if r.kind == "cat_linear":
        return [p.T for p in np.split(a, len(r.theirs), axis=1)]
    if r.kind == "cat":
        return list(np.split(a, len(r.theirs), axis=0))
    return [a[None]]


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): " + ", ".join(items[:limit]) + more


def flat_shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
    """{dotted path: shape} of every variable in an NNX state (abstract or concrete)."""
    return {".".join(map(str, p)): tuple(v.shape) for p, v in nnx.to_flat_state(state)}


def apply_rules(
    rules: list[Rule],
    theirs: dict[str, np.ndarray],
    ours_shapes: dict[str, tuple[int, ...]],
    *,
    what: str,
    allow_partial: bool = False,
    computed: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Published state dict -> {our dotted path: array}; raises ConversionError naming every bad key.

    Missing published keys, unexpected published keys and shape mismatches are all collected and
    reported together. `computed` names our variables the layout does not store (the caller fills
    them, e.g. a fixed position table). `allow_partial=True` converts what matches and returns the list of problems
    instead of raising (the caller keeps its initial values for the rest).
    """
    covered = {r.ours for r in rules}
    diff = sorted((covered | set(computed)) ^ set(ours_shapes))
    assert not diff, f"converter bug: rules and model disagree on {diff[:8]}"
    expected = {k for r in rules for k in r.theirs}
    missing = sorted(expected - set(theirs))
    unexpected = sorted(set(theirs) - expected)
    out, bad_shape = {}, []
    for r in rules:
        if any(k not in theirs for k in r.theirs):
            continue
        arrays = [np.asarray(theirs[k]) for k in r.theirs]
        try:
            a = _forward(r, arrays)
        except ValueError:
            a = None
        if a is None or tuple(a.shape) != ours_shapes[r.ours]:
            got = " + ".join(f"{k} {list(x.shape)}" for k, x in zip(r.theirs, arrays, strict=True))
            bad_shape.append(f"{got} (expected to give {list(ours_shapes[r.ours])} for {r.ours})")
            continue
        out[r.ours] = a
    problems = []
    if missing:
        problems.append(_listing("missing keys", missing))
    if unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if bad_shape:
        problems.append(_listing("mis-shaped keys", bad_shape, limit=6))
    if problems and not allow_partial:
        raise ConversionError(
            f"{what}: the state dict does not match the expected layout; "
            + "; ".join(problems)
            + " (pass allow_partial=True / --allow_partial to convert only what matches)"
        )
    return out, problems


def export_rules(rules: list[Rule], ours: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{our dotted path: array} -> published state dict (the exact inverse of `apply_rules`)."""
    out = {}
    for r in rules:
        for k, a in zip(r.theirs, _inverse(r, np.asarray(ours[r.ours])), strict=True):
            out[k] = np.ascontiguousarray(a)
    return out


def state_to_flat(state: nnx.State) -> dict[str, np.ndarray]:
    """NNX state -> {dotted path: numpy array}."""
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def fill_state(abstract: nnx.State, values: dict[str, np.ndarray], *, dtype=jnp.float32) -> nnx.State:
    """A concrete state with the structure of `abstract` and the given values (every leaf required)."""
    flat = []
    for p, v in nnx.to_flat_state(abstract):
        key = ".".join(map(str, p))
        arr = np.asarray(values[key])
        if tuple(arr.shape) != tuple(v.shape):
            raise ConversionError(
                f"{key}: shape {list(arr.shape)} does not match the model's {list(v.shape)}"
            )
        flat.append(
            (p, v.replace(jnp.asarray(arr, dtype if np.issubdtype(arr.dtype, np.floating) else None)))
        )
    return nnx.from_flat_state(flat)


def _json_config(cfg) -> str:
    d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    return json.dumps(d, sort_keys=True, default=list)


def save_converted(
    path: str | os.PathLike, kind: str, config, params: dict[str, np.ndarray], extra: dict | None = None
) -> str:
    """Write our flattened parameters + metadata to `path` (.safetensors) and `path.sha256`.

    kind: what builds the module (`'model'` = `models.build_model(config)`, or a text encoder kind).
    Returns the SHA-256 hex digest of the written file.
    """
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"output {path!r} must end in .safetensors")
    meta = {
        "format": FORMAT,
        "kind": kind,
        "config": _json_config(config),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    safetensors_io.write(path, {k: np.asarray(v) for k, v in params.items()}, meta)
    digest = sha256_file(path)
    with open(path + ".sha256", "w") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
    return digest


@dataclasses.dataclass
class Converted:
    """A loaded converted file: kind, model config, flat parameters, extras, checksum."""

    kind: str
    config: ml_collections.ConfigDict
    params: dict[str, np.ndarray]
    extra: dict
    sha256: str


def read_converted(path: str | os.PathLike, *, verify: bool = True) -> Converted:
    """Read a converted file, verifying it against its `.sha256` sidecar (ValueError on mismatch)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"converted file {path!r} does not exist")
    digest = sha256_file(path)
    if verify:
        side = path + ".sha256"
        if not os.path.isfile(side):
            raise ValueError(
                f"{path}: checksum file {side} is missing (re-run the converter, or verify=False)"
            )
        want = open(side).read().split()[0] if os.path.getsize(side) else ""
        if want != digest:
            raise ValueError(f"{path}: SHA-256 {digest} does not match {side} ({want}); the file is damaged")
    params, meta = safetensors_io.read(path)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a diffusion_jax converted file (format {meta.get('format')!r}, want {FORMAT!r})"
        )
    cfg = ml_collections.ConfigDict(json.loads(meta["config"]))
    return Converted(meta["kind"], cfg, params, json.loads(meta.get("extra", "{}")), digest)
