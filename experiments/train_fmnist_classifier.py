"""Train the Fashion-MNIST feature classifier (`diffusion_jax.metrics.classifier`) and report its test accuracy.

Data: Debian's dataset-fashion-mnist (no download). Adam (lr 1e-3, cosine decay to 0), batch 128,
random horizontal flips, cross-entropy; the checkpoint (`--out`, an .npz with the test accuracy and
this command in its metadata) is the input of the Fashion-MNIST feature distance.

    python -m experiments.train_fmnist_classifier --out=checkpoints/fmnist_classifier.npz

`--train_subset` / `--test_subset` / `--epochs` make a quick run (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffusion_jax.data import fashion_mnist
from diffusion_jax.metrics import classifier


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="checkpoint path (.npz)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_subset", type=int, default=0, help="use only the first N train images (0 = all)")
    p.add_argument("--test_subset", type=int, default=0, help="evaluate on the first N test images (0 = all)")
    p.add_argument("--source_dir", default=fashion_mnist.DEBIAN_DIR)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.train_subset < 0 or args.test_subset < 0:
        p.error("--train_subset / --test_subset must be >= 0")
    return args


def _to_input(u8):
    return u8.astype(np.float32) / 127.5 - 1.0


def make_step(graphdef, tx):
    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits, _ = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def accuracy(graphdef, params, images, labels, batch: int = 1000) -> float:
    predict = jax.jit(lambda p, x: jnp.argmax(nnx.merge(graphdef, p)(x)[0], -1))
    hits = sum(
        int(np.sum(np.asarray(predict(params, _to_input(images[i : i + batch]))) == labels[i : i + batch]))
        for i in range(0, len(images), batch)
    )
    return hits / len(images)


def train(args) -> dict:
    xtr, ytr = fashion_mnist.load_split_numpy("train", args.source_dir)
    xte, yte = fashion_mnist.load_split_numpy("test", args.source_dir)
    if args.train_subset:
        xtr, ytr = xtr[: args.train_subset], ytr[: args.train_subset]
    if args.test_subset:
        xte, yte = xte[: args.test_subset], yte[: args.test_subset]
    graphdef, params = nnx.split(classifier.create(args.seed))
    steps_per_epoch = max(len(xtr) // args.batch_size, 1)
    tx = optax.adam(optax.cosine_decay_schedule(args.lr, args.epochs * steps_per_epoch))
    opt_state = tx.init(params)
    step = make_step(graphdef, tx)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    for epoch in range(args.epochs):
        order = rng.permutation(len(xtr))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * args.batch_size : (s + 1) * args.batch_size]
            x = _to_input(xtr[idx])
            flip = rng.random(len(idx)) < 0.5
            x[flip] = x[flip, :, ::-1]
            params, opt_state, loss = step(params, opt_state, x, ytr[idx])
            losses.append(float(loss))
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {np.mean(losses):.4f} ({time.time() - t0:.0f}s)",
            flush=True,
        )
    acc = accuracy(graphdef, params, xte, yte)
    meta = {
        "test_accuracy": acc,
        "test_images": len(xte),
        "train_images": len(xtr),
        "epochs": args.epochs,
        "seed": args.seed,
        "command": "python -m experiments.train_fmnist_classifier " + " ".join(args.argv),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    classifier.save(args.out, nnx.merge(graphdef, params), **meta)
    return meta


def main(argv=None):
    args = _parse(argv)
    fashion_mnist.check_source_files(args.source_dir)  # fail before any compilation
    meta = train(args)
    print(json.dumps(meta))
    print(f"test accuracy {meta['test_accuracy']:.4f} on {meta['test_images']} images; wrote {args.out}")


if __name__ == "__main__":
    main()
