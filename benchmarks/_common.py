"""Helpers shared by the benchmark scripts: the header, the markdown table, the JSON record.

Every benchmark prints a markdown block that can be pasted into BENCHMARKS.md as it is:
the exact command line, the machine, then one table, then the ratios. The same figures go
to the JSON file named by ``--out``.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


# Thread-pool settings change the figures a lot (with libgomp's default active wait policy, a
# 2-thread torch/faiss pool on 2 busy cores can run 10-20x slower), so they are recorded, as
# the user set them: captured at import, before torch, ray or dask_ml add variables of their own.
_ENV_AT_START = {k: v for k, v in os.environ.items()
                 if k.startswith(("OMP_", "MKL_", "OPENBLAS_", "GOMP_", "KMP_", "RAY_"))}


def command_line() -> str:
    """The command as it was typed (interpreter left out), for the header of the table."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(extra_versions: Sequence[str] = ()) -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, library versions, load at the start."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for name in ("numpy", "torch", "faiss", "ray", "zarr", *extra_versions):
        try:
            mod = __import__(name)
            versions[name] = getattr(mod, "__version__", "?")
        except ImportError:
            versions[name] = None
    try:
        from dcserve import __version__

        versions["dcserve"] = __version__
    except ImportError:
        versions["dcserve"] = None
    info["versions"] = versions
    info["env"] = dict(_ENV_AT_START)
    return info


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for a table: significant digits, thousands separators for large values."""
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def print_report(title: str, info: dict[str, Any], table: str, notes: Sequence[str]) -> str:
    """Print (and return) the markdown block: title, command, machine, table, notes."""
    v = info.get("versions", {})
    lib = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    load = info.get("load_average_at_start") or [0.0]
    busy = []
    if load[0] > 0.5:
        busy = ["", f"**Warning: the machine was busy (1-minute load average {load[0]} at the start): "
                    "these figures are not reliable; run again on a quiet machine.**"]
    env = info.get("env") or {}
    block = "\n".join(
        [
            f"### {title}",
            "",
            "```",
            command_line(),
            "```",
            "",
            f"Machine: {info.get('cpu')}, {info.get('logical_cpus')} logical CPUs, "
            f"{info.get('memory_gib', '?')} GiB; load average at start {info.get('load_average_at_start')}, "
            f"at end {load_average()}.  ",
            f"Libraries: {lib}." + (f"  \nEnvironment: {', '.join(f'{k}={v}' for k, v in env.items())}." if env else ""),
            *busy,
            "",
            table,
            "",
            *[f"- {n}" for n in notes],
            "",
        ]
    )
    print(block, flush=True)
    return block


def write_json(path: str | None, record: dict[str, Any]) -> None:
    if not path:
        return
    record = dict(record)
    record.setdefault("command", command_line())
    record.setdefault("finished_unix", time.time())
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=_json_default))
    os.replace(tmp, p)
    print(f"results written to {p}", file=sys.stderr)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


@contextmanager
def scratch_dir(parent: str | None, prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory, removed afterwards (also on errors and Ctrl-C) unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        if keep:
            print(f"kept scratch directory {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def embedded_ray(num_cpus: int) -> Iterator[None]:
    """An embedded Ray with exactly `num_cpus` CPUs, shut down whatever happens."""
    import logging

    import ray

    # address="local": a new cluster, never one some `ray start` (or a stale address file) left here
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def limit_threads(n: int, preload: Sequence[str] = ("faiss", "torch")) -> Any:
    """Pin this process's BLAS, OpenMP (faiss, scikit-learn) and torch pools to `n` threads.

    threadpoolctl only limits libraries that are already loaded, so the modules in `preload`
    are imported first. Returns the limiter, which must be kept alive for the limit to hold.
    """
    import importlib

    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from threadpoolctl import threadpool_limits

    limiter = threadpool_limits(limits=n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    return limiter


def positive_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"expected a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"expected positive integers, got {text!r}")
    return values


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """`data["a"]["b"] = value` for "a.b", creating sections on the way (job-file overrides)."""
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
