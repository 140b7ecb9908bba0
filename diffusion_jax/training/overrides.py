"""`--config` and `--config.a.b=value` for the CLIs (train, sample, evaluate), as users expect.

* `--config=path.py[:arg]` calls the file's `get_config(arg)`; `--config=DIR/config.json` reads a
  run's saved config back (JSON lists become tuples, as configs write them).
* `--config.a.b=value` sets any existing field, parsed by the field's type (bool: true/false/1/0;
  int; float; str as given; tuples and dicts as Python literals). New keys are accepted only inside
  `*kwargs` dicts (sampler / grid / schedule / distribution options, e.g.
  `--config.grid.kwargs.t_min=0.001`, `--config.sampling.sampler_kwargs.order=3`), where a value is
  parsed as a Python literal if it is one, else kept as a string. Anything else names the field and
  lists the valid ones.
* `run_cli(main, argv)`: config errors (ValueError / FileNotFoundError) print one line
  `<program>: error: <message>` and exit with status 2, instead of a traceback.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys

import ml_collections

PREFIX = "--config"


def pop_config_args(argv) -> tuple[str | None, list[tuple[str, str]]]:
    """Split `--config[=| ]SPEC` and `--config.a.b=VALUE` out of argv: (spec or None, [(path, raw)])."""
    spec, sets = None, []
    args = list(argv[1:]) if argv else []
    i = 0
    while i < len(args):
        a = args[i]
        if a == PREFIX or a.startswith(PREFIX + "="):
            if a == PREFIX:
                if i + 1 >= len(args):
                    raise ValueError(
                        "--config needs a value: --config=path.py[:arg] or --config=DIR/config.json"
                    )
                spec, i = args[i + 1], i + 1
            else:
                spec = a[len(PREFIX) + 1 :]
        elif a.startswith(PREFIX + "."):
            path, eq, raw = a[len(PREFIX) + 1 :].partition("=")
            if not eq:
                raise ValueError(f"{a}: give a value, e.g. {a}=VALUE")
            sets.append((path, raw))
        i += 1
    return spec, sets


def split_argv(argv) -> tuple[list[str], list[str]]:
    """(argv without the config arguments, the config arguments) for handing the rest to absl."""
    rest, cfg_args = [argv[0]], []
    it = iter(range(1, len(argv)))
    for i in it:
        a = argv[i]
        if a == PREFIX:
            cfg_args.append(a)
            j = next(it, None)
            if j is not None:
                cfg_args.append(argv[j])
        elif a.startswith(PREFIX + "=") or a.startswith(PREFIX + "."):
            cfg_args.append(a)
        else:
            rest.append(a)
    return rest, cfg_args


def _tuplify(x):
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    if isinstance(x, dict):
        return {k: _tuplify(v) for k, v in x.items()}
    return x


def load_config_arg(spec: str) -> ml_collections.ConfigDict:
    """A config from `path.py[:arg]` (its `get_config(arg)`) or from a JSON file (a run's config.json)."""
    path, _, arg = spec.partition(":") if not spec.endswith(".json") else (spec, "", "")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config={spec}: no such file {path!r}")
    if path.endswith(".json"):
        with open(path) as f:
            try:
                return ml_collections.ConfigDict(_tuplify(json.load(f)))
            except json.JSONDecodeError as e:
                raise ValueError(f"--config={spec}: not valid JSON ({e})") from None
    mod_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    if mod_spec is None or not path.endswith(".py"):
        raise ValueError(f"--config={spec}: expected a .py config file (path.py[:arg]) or a .json config")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config={spec}: {path} has no get_config(arg)")
    return module.get_config(arg or None)


def _literal(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _parse(raw: str, typ, field: str):
    if typ is bool:
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"config.{field}={raw!r} must be true or false")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"config.{field}={raw!r} must be an integer") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"config.{field}={raw!r} must be a number") from None
    if typ is str:
        return raw
    if typ in (tuple, list):
        v = _literal(raw)
        return tuple(v) if isinstance(v, tuple | list) else (v,)
    if typ is not None and issubclass(typ, ml_collections.ConfigDict | dict):
        v = _literal(raw)
        if not isinstance(v, dict):
            raise ValueError(f"config.{field}={raw!r} must be a dict literal, e.g. {{'t_min': 0.001}}")
        return ml_collections.ConfigDict(v)
    return _literal(raw)


def _is_kwargs(name: str) -> bool:
    return name.endswith("kwargs")


def apply_overrides(cfg: ml_collections.ConfigDict, sets) -> ml_collections.ConfigDict:
    """Apply [(dotted path, raw value)] to `cfg` in place (module doc); returns cfg."""
    for path, raw in sets:
        keys = path.split(".")
        node, walked = cfg, []
        for k in keys[:-1]:
            if k not in node:
                if walked and _is_kwargs(walked[-1]) or _is_kwargs(k):
                    node[k] = ml_collections.ConfigDict()
                else:
                    _unknown(node, k, walked)
            node, walked = node[k], walked + [k]
            if not isinstance(node, ml_collections.ConfigDict | dict):
                raise ValueError(
                    f"config.{'.'.join(walked)} is a value, not a section: cannot set config.{path}"
                )
        last = keys[-1]
        if last in node:
            typ = node.get_type(last) if isinstance(node, ml_collections.ConfigDict) else type(node[last])
            value = _parse(raw, typ, path)
        elif walked and _is_kwargs(walked[-1]):
            value = _literal(raw)
        else:
            _unknown(node, last, walked)
        try:
            node[last] = value
        except TypeError as e:
            raise ValueError(f"config.{path}={raw!r}: {e}") from None
    return cfg


def _unknown(node, key, walked):
    where = "config." + ".".join(walked) if walked else "config"
    valid = sorted(node.keys()) if hasattr(node, "keys") else []
    raise ValueError(f"{where} has no field {key!r}; valid fields: {valid}")


def config_from_argv(argv, default=None) -> ml_collections.ConfigDict | None:
    """The config the command line asks for: `--config` (or `default()` without it), overridden."""
    spec, sets = pop_config_args(argv)
    if spec is None and default is None:
        if sets:
            raise ValueError(
                "--config.* overrides need a base config: pass --config=path.py[:arg] or a config.json"
            )
        return None
    cfg = load_config_arg(spec) if spec is not None else default()
    return apply_overrides(cfg, sets)


def run_cli(main, argv, prog: str | None = None) -> None:
    """`absl.app.run(main)` with the config arguments kept out of absl's flag parser (they reach
    `main` appended to its argv) and config errors printed as one line (exit status 2)."""
    from absl import app

    rest, cfg_args = split_argv(argv)
    prog = prog or (os.path.basename(argv[0]) if argv else "diffusion_jax")

    def wrapped(args):
        try:
            main(list(args) + cfg_args)
        except (ValueError, FileNotFoundError) as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped, argv=rest)


__all__ = [
    "apply_overrides",
    "config_from_argv",
    "load_config_arg",
    "pop_config_args",
    "run_cli",
    "split_argv",
]
