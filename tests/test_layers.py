"""The layer order of the package, checked on every import it makes (module level and inside
functions), parsed with `ast`: an import never points up. docs/design.md ("Layers") states the same
order in prose; this table is the one definition the code is held to.

Lowest first; a module may import its own group and every group before it, with two side branches:
networks (`models`) know only themselves and the conditioning semantics, and `data` knows the core
but never `models`.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "diffusion_jax"

LAYERS = (
    ("base", ("extensions",)),
    ("schedules", ("schedule_base", "schedules")),
    ("predictions, conditioning", ("predictions", "conditioning")),
    (
        "objectives, couplings, interpolants, analytic",
        (
            "objectives",
            "objective_config",
            "presets",
            "couplings",
            "weightings",
            "time_distributions",
            "interpolants",
            "analytic",
        ),
    ),
    ("samplers, likelihood, metrics", ("samplers", "likelihood", "likelihood_fixed", "metrics")),
    ("models", ("models",)),
    ("data", ("data",)),
    ("training", ("training",)),
    ("CLIs", ("train", "sample", "evaluate", "reference_statistics", "convert", "pipeline", "reflow")),
)
"""(group, top-level modules / subpackages of diffusion_jax), lowest first."""

SIDE_BRANCHES = {
    # networks declare logical axis names and implement the conditioning semantics; nothing else
    "models": ("base", "predictions, conditioning:conditioning", "models"),
    # data knows the core, never the networks
    "data": (
        "base",
        "schedules",
        "predictions, conditioning",
        "objectives, couplings, interpolants, analytic",
        "samplers, likelihood, metrics",
        "data",
    ),
}
"""Groups whose allowed imports are not "everything below": group -> allowed groups (a
'group:module' entry allows one module of a group)."""

_RANK = {g: i for i, (g, _) in enumerate(LAYERS)}
_GROUP = {m: g for g, mods in LAYERS for m in mods}


def _top(module: str) -> str | None:
    """'diffusion_jax.samplers.base' -> 'samplers'; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _allowed(src_group: str, target: str) -> bool:
    tgt_group = _GROUP[target]
    if src_group in SIDE_BRANCHES:
        for entry in SIDE_BRANCHES[src_group]:
            g, _, only = entry.partition(":")
            if g == tgt_group and (not only or only == target):
                return True
        return False
    return _RANK[tgt_group] <= _RANK[src_group]


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path):
    """(line, imported diffusion_jax module) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    mod = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "diffusion_jax":
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = mod.split(".")[: len(mod.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(pkg + ([base] if base else []))
            if base.split(".")[0] != "diffusion_jax":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                is_mod = (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    PKG.parent / sub.replace(".", "/")
                ).is_dir()
                yield node.lineno, sub if is_mod else base


FILES = sorted(PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted({_top(_module_name(f)) for f in FILES} - set(_GROUP) - {None})
    assert not missing, f"add these diffusion_jax modules to LAYERS in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_import_points_up(path):
    src = _top(_module_name(path))
    if src is None:
        return
    bad = []
    for line, target in sorted(set(_imports(path))):
        tgt = _top(target)
        if tgt is None or tgt == src:
            continue
        if not _allowed(_GROUP[src], tgt):
            bad.append(
                f"{path.relative_to(PKG.parent)}:{line} imports {target} ({_GROUP[src]} -> {_GROUP[tgt]})"
            )
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The parser finds an import inside a function and resolves `from diffusion_jax import x`."""
    found = dict((t, n) for n, t in _imports(PKG / "training" / "loop.py"))
    assert "diffusion_jax.couplings" in found  # imported inside _host_batch_transform
    assert not _allowed("models", "training") and not _allowed("data", "models")
    assert not _allowed("schedules", "samplers") and _allowed("training", "models")
    assert _allowed("models", "conditioning") and not _allowed("models", "predictions")
    script = tmp_path / "exp.py"
    script.write_text(
        "from diffusion_jax.training import periodic\nfrom diffusion_jax.samplers.base import _concrete\n"
        "def f():\n    return periodic._sampler_and_grid(1)\n"
    )
    uses = sorted(name for _, name in _private_uses(script))
    assert uses == ["diffusion_jax.samplers.base._concrete", "periodic._sampler_and_grid"]


OUTSIDE = sorted(
    p for d in ("experiments", "benchmarks") for p in (PKG.parent / d).rglob("*.py") if p.is_file()
)


def _private_uses(path: pathlib.Path):
    """(line, name) for every private name (leading '_') taken from diffusion_jax: imported by
    `from diffusion_jax... import _x`, or read as `mod._x` off a name bound to a diffusion_jax import."""
    tree = ast.parse(path.read_text(), str(path))
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "diffusion_jax":
            for a in node.names:
                if a.name.startswith("_"):
                    yield node.lineno, f"{node.module}.{a.name}"
                bound.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "diffusion_jax":
                    bound.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
        ):
            yield node.lineno, f"{node.value.id}.{node.attr}"


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(PKG.parent)))
def test_experiments_and_benchmarks_use_only_public_names(path):
    """Scripts on top of the package use its public API (a private helper they need is made public)."""
    bad = [f"{path.relative_to(PKG.parent)}:{line} uses {name}" for line, name in _private_uses(path)]
    assert not bad, "\n".join(bad)
