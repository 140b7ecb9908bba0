"""Extension by import path: the named tables of parts, and how code outside the package adds to them.

Every kind of part that a config names (schedules, weightings, time distributions, couplings,
networks; samplers and grids in `samplers.registry`) lives in one explicit ``name -> part`` dict in
the module that defines the kind. Nothing in the package fills a table as a side effect of being
imported; a researcher adds a part in one of two ways:

* by a dotted path wherever a name is accepted: ``schedule="my_lab.parts:SubVP"`` imports
  ``my_lab.parts`` and takes its attribute ``SubVP`` (no registration at all);
* by an explicit call of the kind's public ``register_*`` function (``schedules.register_schedule``,
  ``weightings.register_weighting``, ...), typically at the top of the researcher's own module, and
  by listing that module in the config (``config.imports = ("my_lab.parts",)``). The training,
  sampling and evaluation entry points import ``config.imports`` (`import_modules`) before any name
  is resolved; the run's saved ``config.json`` keeps the list, so the run reopens with its parts.

This module is the bottom layer: it imports nothing from the package.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$")


def is_dotted(name: Any) -> bool:
    """True for a ``'package.module:Attribute'`` reference (a str with exactly one colon)."""
    return isinstance(name, str) and bool(_DOTTED.match(name))


def import_object(path: str) -> Any:
    """The object named by ``'package.module:Attribute'`` (the attribute may be dotted: ``A.b``).

    Raises ValueError naming the path when the module cannot be imported or lacks the attribute.
    """
    if not is_dotted(path):
        raise ValueError(f"{path!r} is not a 'package.module:Name' reference")
    mod_name, attr = path.split(":")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {mod_name!r} (from {path!r}): {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def import_modules(modules: Iterable[str] | str | None) -> list[str]:
    """Import each module named in `modules` (``config.imports``), in order; returns their names.

    This is where a researcher's module runs its ``register_*`` calls. Raises ValueError naming the
    module that cannot be imported.
    """
    if modules is None:
        return []
    if isinstance(modules, str):
        modules = (modules,)
    names = []
    for m in modules:
        if not isinstance(m, str) or not m or ":" in m:
            raise ValueError(f"imports: {m!r} must be a module name such as 'my_lab.parts'")
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise ValueError(f"imports: cannot import module {m!r}: {e}") from e
        names.append(m)
    return names


def _check_kind(kind: str, name: Any, part: Any, expect: type | None) -> Any:
    """`part` if it is an instance of `expect`, or (for a class) a subclass of it; else ValueError."""
    if expect is None or isinstance(part, expect) or (isinstance(part, type) and issubclass(part, expect)):
        return part
    raise ValueError(f"{kind} {name!r} is {part!r}, not a {expect.__module__}.{expect.__qualname__}")


def register(
    table: MutableMapping[str, Any],
    kind: str,
    name: str,
    part: Any,
    *,
    overwrite: bool = False,
    expect: type | None = None,
) -> Any:
    """Add `part` to `table` under `name` (the shared body of every ``register_*`` function).

    `expect`: the type `part` must be an instance (or subclass) of. Re-registering the same object
    is a no-op (a module imported twice); another object under a taken name raises ValueError unless
    ``overwrite=True``. Returns `part`.
    """
    _check_kind(kind, name, part, expect)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"register {kind}: name {name!r} must be a word such as 'sub_vp' (no ':')")
    if name in table and table[name] is not part and not overwrite:
        raise ValueError(f"{kind} {name!r} is already registered; pass overwrite=True to replace it")
    table[name] = part
    return part


def lookup(table: MutableMapping[str, Any], kind: str, name: Any, *, expect: type | None = None) -> Any:
    """`table[name]`, or the object a ``'package.module:Name'`` reference points to (checked to be
    an instance or subclass of `expect`).

    Raises ValueError "unknown <kind> <name>; valid names: [...]" otherwise.
    """
    if is_dotted(name):
        return _check_kind(kind, name, import_object(name), expect)
    if not isinstance(name, str) or name not in table:
        raise ValueError(
            f"unknown {kind} {name!r}; valid names: {sorted(table)} "
            "(or a 'package.module:Name' reference, or one added by register_*)"
        )
    return table[name]


def known(table: MutableMapping[str, Any], name: Any) -> bool:
    """Whether `name` resolves in `table` (a registered name or a dotted reference)."""
    return is_dotted(name) or (isinstance(name, str) and name in table)


__all__ = ["import_modules", "import_object", "is_dotted", "known", "lookup", "register"]
