"""Shared plumbing of the benchmark scripts: timing, machine description, Markdown / JSON reports.

Why ratios: absolute wall-clock numbers depend on the machine and on whoever else is using it (the
CI box has 2 shared cores). A ratio of two implementations measured in the same process, with their
repeats interleaved, cancels most of that drift, so it is the number the reports lead with. Timings
are medians (robust to the occasional preempted repeat) and every timed call ends in
`jax.block_until_ready`, since JAX dispatch is asynchronous and an unblocked call only measures
the dispatch.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def block(x):
    """Wait for every array in the pytree `x` (async dispatch would otherwise hide the work)."""
    return jax.block_until_ready(x)


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of `fn`, blocked on its result."""
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def median_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each fn, running one call of every fn per round.

    Interleaving (A B C, A B C, ...) instead of (A A A, B B B, ...) means a burst of load from
    another process hits all candidates alike, which keeps their ratio honest on a shared machine.
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in samples.items()}


def machine_info() -> dict:
    """What the numbers were measured on (reported next to every table)."""
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The exact command that reproduces this run."""
    args = list(sys.argv[1:] if argv is None else argv)
    flags = os.environ.get("XLA_FLAGS")
    prefix = f"XLA_FLAGS={shlex.quote(flags)} " if flags else ""
    return prefix + " ".join([".venv/bin/python", "-m", module, *map(shlex.quote, args)])


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; floats are formatted by the caller."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def fmt_ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def write_report(out_dir: str, name: str, title: str, meta: dict, sections: Sequence[str], data: dict):
    """Write `<out_dir>/<name>.md` (title, how it was measured, tables) and `<name>.json` (meta + data).

    Returns the Markdown text (the scripts also print it).
    """
    os.makedirs(out_dir, exist_ok=True)
    m = meta
    head = [
        f"# {title}",
        "",
        f"- date: {m['date_utc']}",
        f"- machine: {m['nproc']} CPU cores ({m['platform']}), load average (1 min) at start "
        f"{m['load_avg_1m']}; shared with other jobs",
        f"- jax {m['jax']} ({m['backend']}, {m['devices']} devices), Python {m['python']}",
        f"- command: `{m['command']}`",
        f"- wall time of the whole run: {m['elapsed_s']:.0f} s",
        "",
    ]
    text = "\n".join(head) + "\n" + "\n\n".join(sections) + "\n"
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, **data}, f, indent=2, sort_keys=True, default=float)
    return text


def run_main(name: str, title: str, parse_args, run, report, argv: Sequence[str] | None) -> dict:
    """The shared `main` of every benchmark: parse, run, time the whole run, print the Markdown report
    and write it (+ JSON) to `--out`. Returns {"meta": ..., **results}."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    meta = machine_info()
    meta["command"] = command_line(f"benchmarks.{name}", argv)
    res = run(args)
    meta["elapsed_s"] = time.perf_counter() - t0
    meta["quick"] = bool(args.quick)
    text = write_report(args.out, name, title, meta, report(res, args), res)
    print(text)
    return {"meta": meta, **res}


def base_args(doc: str, argv: Sequence[str] | None):
    """The flags every benchmark takes: --quick (tiny sizes: a smoke test) and --out."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    p.add_argument("--out", default=RESULTS_DIR, help="directory for <name>.md and <name>.json")
    return p.parse_args(argv)
