"""Collective communication in a compiled XLA program: counts and bytes moved, read from its HLO.

`collective_stats(compiled.as_text())` lists every all-gather, all-reduce, reduce-scatter, all-to-all
and collective-permute with its result shapes and replica-group size n, and the bytes each device
sends under the standard bandwidth-optimal (ring) algorithms (Patarasuk & Yuan 2009; the "bus
bandwidth" accounting of NCCL's performance notes):

- all-gather of a result of S bytes: S (n-1)/n (each device receives the n-1 shards it lacks);
- reduce-scatter of a result (one shard) of s bytes: s (n-1);
- all-reduce of S bytes: 2 S (n-1)/n (a reduce-scatter then an all-gather);
- all-to-all of S bytes: S (n-1)/n; collective-permute of S bytes: S.

Groups of one device (n = 1) move nothing. Used by the FSDP tests and `benchmarks/throughput.py`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_DTYPE_BYTES.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16})
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?\S+\s*=\s*(.*?)\s(" + "|".join(KINDS) + r")(?:-start)?\(")
_SHAPE = re.compile(r"\b(pred|[subfc]\d+|bf16)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective op: kind, result shapes (dtype, dims), device-group size, bytes sent/device."""

    kind: str
    shapes: tuple
    group: int
    bytes: float

    @property
    def result_bytes(self) -> int:
        return int(sum(_DTYPE_BYTES[d] * int(np.prod(s, dtype=np.int64)) for d, s in self.shapes))


def _group_size(line: str) -> int:
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        return int(np.prod([int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2))]))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if m:
        return int(m.group(2))
    m = re.search(r"source_target_pairs=\{", line)
    return 2 if m else 1


def _sent(kind: str, nbytes: int, n: int) -> float:
    if n <= 1:
        return 0.0
    if kind == "reduce-scatter":
        return nbytes * (n - 1)
    if kind == "all-reduce":
        return 2.0 * nbytes * (n - 1) / n
    if kind == "collective-permute":
        return float(nbytes)
    return nbytes * (n - 1) / n


def parse_collectives(hlo_text: str) -> list[Collective]:
    """Every collective op of an HLO module's text (`compiled.as_text()`), async pairs counted once."""
    out = []
    for line in hlo_text.splitlines():
        m = _OP.match(line)
        if not m:
            continue
        kind = m.group(2)
        shapes = tuple(
            (d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _SHAPE.findall(m.group(1))
        )
        if m.group(0).rstrip("(").endswith("-start"):
            shapes = shapes[len(shapes) // 2 :]  # (operands, results) tuple of an async start op
        n = _group_size(line)
        c = Collective(kind, shapes, n, 0.0)
        out.append(dataclasses.replace(c, bytes=_sent(kind, c.result_bytes, n)))
    return out


def collective_stats(hlo_text: str) -> dict[str, dict[str, float]]:
    """{kind: {'count': ops moving data (group > 1), 'bytes': bytes sent per device}} for every KIND."""
    stats = {k: {"count": 0, "bytes": 0.0} for k in KINDS}
    for c in parse_collectives(hlo_text):
        if c.group > 1:
            stats[c.kind]["count"] += 1
            stats[c.kind]["bytes"] += c.bytes
    return stats


__all__ = ["KINDS", "Collective", "collective_stats", "parse_collectives"]
