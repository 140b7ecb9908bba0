"""Command line: `python -m diffusion_jax.convert MODEL SRC --out OUT.safetensors` and `... export`.

  python -m diffusion_jax.convert dit DiT-XL-2-256x256.pt --out ckpt/dit_xl2_256.safetensors
  python -m diffusion_jax.convert dit path/to/DiT-XL-2-256 --out ckpt/dit_xl2_256.safetensors
  python -m diffusion_jax.convert vae path/to/sd-vae-ft-ema --out ckpt/sd_vae_ft_ema.safetensors
  python -m diffusion_jax.convert export ckpt/dit_xl2_256.safetensors --layout diffusers --out dit_folder
  python -m diffusion_jax.convert embed ckpt/clip_text.safetensors --ids ids.npy --mask mask.npy --out emb.npy

Prints the written file, its SHA-256 and the model config; exits with a one-line error otherwise.
"""

from __future__ import annotations

import argparse
import sys

from diffusion_jax.convert import api


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffusion_jax.convert", description=__doc__.split("\n")[0])
    p.add_argument("model", choices=sorted(api.LAYOUTS) + ["export", "embed"])
    p.add_argument("src", help="published file/folder (or, for export, a converted .safetensors)")
    p.add_argument("--out", required=True, help="converted .safetensors (or export target)")
    p.add_argument("--layout", default=None, help="source/target layout (default: from the path)")
    p.add_argument("--allow_partial", action="store_true", help="convert only the keys that match")
    p.add_argument("--num_heads", type=int, default=None, help="DiT official layout: attention heads")
    p.add_argument("--force", action="store_true", help="export even if the target computes differently")
    p.add_argument("--ids", help="embed: token ids [N, L] .npy (tokenised with the encoder's tokenizer)")
    p.add_argument("--mask", help="embed: optional attention mask [N, L] .npy (1 = token)")
    return p


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.model == "embed":
            import numpy as np

            from diffusion_jax.convert import text

            if not a.ids or not a.out.endswith(".npy"):
                raise ValueError("embed needs --ids IDS.npy and --out EMB.npy")
            mask = np.load(a.mask) if a.mask else None
            np.save(a.out, text.embed(a.src, np.load(a.ids), mask))
            print(f"wrote {a.out}")
            return 0
        if a.model == "export":
            out = api.export(a.src, a.out, layout=a.layout, force=a.force)
            print(f"wrote {out}")
            return 0
        kw = {"num_heads": a.num_heads} if a.num_heads else {}
        info = api.convert(a.model, a.src, a.out, layout=a.layout, allow_partial=a.allow_partial, **kw)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}  sha256 {info.sha256}")
    if info.extra.get("partial"):
        print("PARTIAL conversion: " + "; ".join(info.extra["partial"]))
    print(f"config: {info.config.to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
