"""Convert pytorch-fid's Inception weights to a local ``.npz`` and load them into the Flax network.

The standard FID weights are pytorch-fid's port of TensorFlow's ``inception-2015-12-05`` graph:

    URL     https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    bytes   95,628,359
    sha256  6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2

(the file name carries the sha256 prefix, torch.hub's convention). Nothing is downloaded at run time:
fetch the file once by hand, then

    python -m diffusion_jax.metrics.inception_weights pt_inception-2015-12-05-6726825d.pth inception_fid.npz

Conversion needs ``torch`` (the ``parity`` extra) to read the pickle; loading the ``.npz`` needs only
numpy. The file is a state dict of torchvision's ``Inception3`` with pytorch-fid's FID blocks; each
``<name>.conv.weight`` [out, in, kh, kw] becomes ``<name>/conv/kernel`` [kh, kw, in, out] and
``<name>.bn.{weight, bias, running_mean, running_var}`` becomes ``<name>/bn/{scale, bias, mean, var}``.
The 1008-way classifier (``fc``) is not part of the pool3 network and is dropped.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os

import jax
import numpy as np
from flax import nnx, traverse_util

from diffusion_jax.metrics import inception

PUBLISHED_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
PUBLISHED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PUBLISHED_BYTES = 95_628_359

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_SKIPPED_PREFIXES = ("fc.", "AuxLogits.")

MISSING_MSG = (
    "Inception weights file {path!r} not found. FID needs the standard pytorch-fid weights converted "
    "to .npz: download\n    " + PUBLISHED_URL + "\n(sha256 " + PUBLISHED_SHA256 + ") and run\n"
    "    python -m diffusion_jax.metrics.inception_weights pt_inception-2015-12-05-6726825d.pth {path}"
)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _abstract_split():
    """(graphdef, state of ShapeDtypeStructs) of the network. Built once per process: constructing the
    NNX module, even abstractly, costs ~1.5 s of Python; callers get a copy of the state to fill."""
    return nnx.split(inception.create(abstract=True))


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Flat name ('Mixed_5b/branch1x1/conv/kernel', ...) -> shape of every array of the Flax network."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(_abstract_split()[1]), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def torch_state_to_flat(state_dict) -> dict[str, np.ndarray]:
    """Rename/transpose a pytorch-fid Inception3 state dict (name -> array-like) to our flat names.

    Raises ValueError naming the first missing, unexpected or wrongly shaped tensor.
    """
    shapes = expected_shapes()
    out = {}
    for key, value in state_dict.items():
        if key.startswith(_SKIPPED_PREFIXES) or key.endswith("num_batches_tracked"):
            continue
        arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float32)
        module, kind, leaf = key.rsplit(".", 2)
        if kind == "conv" and leaf == "weight":
            name, arr = f"{module.replace('.', '/')}/conv/kernel", arr.transpose(2, 3, 1, 0)
        elif kind == "bn" and leaf in _BN:
            name = f"{module.replace('.', '/')}/bn/{_BN[leaf]}"
        else:
            raise ValueError(f"unexpected tensor {key!r} in the Inception state dict")
        if name not in shapes:
            raise ValueError(f"unexpected tensor {key!r} in the Inception state dict")
        if arr.shape != shapes[name]:
            raise ValueError(f"tensor {key!r} has shape {arr.shape}, expected {shapes[name]} (as {name})")
        out[name] = arr
    missing = sorted(set(shapes) - set(out))
    if missing:
        raise ValueError(f"the Inception state dict lacks {len(missing)} tensors, e.g. {missing[0]!r}")
    return out


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, verify: bool = True) -> str:
    """Convert pytorch-fid's ``.pth`` at `src` to an ``.npz`` at `dst`; returns the source's sha256.

    With `verify` the source must be the published file (sha256 above); pass ``verify=False`` for
    other weights (e.g. random ones in tests; their FIDs are not comparable with published numbers).
    """
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src!r} not found; the standard file is {PUBLISHED_URL}")
    digest = sha256_of(src)
    if verify and digest != PUBLISHED_SHA256:
        raise ValueError(
            f"{src!r} has sha256 {digest}, not the published {PUBLISHED_SHA256}; "
            "pass verify=False (--no-verify) to convert other weights anyway"
        )
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("converting the .pth needs torch: pip install -e '.[parity]'") from e
    flat = torch_state_to_flat(torch.load(src, map_location="cpu", weights_only=True))
    tmp = f"{dst}.tmp.npz"
    np.savez(tmp, **flat, __source_sha256__=np.asarray(digest))
    os.replace(tmp, dst)
    return digest


def load_inception(path: str | os.PathLike):
    """``(graphdef, state)`` of the FID InceptionV3 with the converted weights at `path` (an ``.npz``
    made by `convert`); use with `inception.pool3_features`. A missing file raises FileNotFoundError
    saying where to get the weights and how to convert them."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(MISSING_MSG.format(path=str(path)))
    graphdef, abstract = _abstract_split()
    state = jax.tree.map(lambda x: x, abstract)  # a fresh State: filling it leaves the cached one abstract
    shapes = expected_shapes()
    with np.load(path) as f:
        flat = {k: f[k] for k in f.files if not k.startswith("__")}
    bad = sorted(set(shapes) ^ set(flat)) or [k for k in shapes if flat[k].shape != shapes[k]]
    if bad:
        raise ValueError(f"{path!r} is not a converted FID Inception file (first bad entry: {bad[0]!r})")
    pure = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    nnx.replace_by_pure_dict(state, pure)
    return graphdef, state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Convert pytorch-fid's Inception weights to .npz.")
    parser.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("dst", help="output .npz")
    parser.add_argument(
        "--no-verify", action="store_true", help="accept weights other than the published file"
    )
    args = parser.parse_args(argv)
    digest = convert(args.src, args.dst, verify=not args.no_verify)
    print(f"wrote {args.dst} (source sha256 {digest})")


if __name__ == "__main__":
    main()
