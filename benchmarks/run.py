"""touchfile against every Python peer and the kernel floor, side by side, in one run.

    python -m benchmarks            # the full run, under 3 minutes on 2 cores
    python -m benchmarks --quick    # a smoke run, about half a minute
    python benchmarks/run.py        # the same as python -m benchmarks
    python -m benchmarks --only pg_uncontended --only pg_handoff ...  # some figures only

The PostgreSQL figures (pg_*) start a throwaway server of their own
(tests/pgserver.py; apt-get install postgresql), left out with a note if there
is none, unless the environment variable CI is set: then the run fails.

Prints a Markdown table (progress goes to stderr) and writes, to
benchmarks/results/ (or --out), DATE.md, DATE.json (every sample) and, when
matplotlib is installed (pip install '.[bench]'), DATE-latency.png,
DATE-throughput.png, DATE-waiters.png and DATE-postgres.png. A --quick run's
files end in -quick.
"""

from __future__ import annotations

import os
import sys

if not __package__:  # run as a script: make the checkout's `benchmarks` importable
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import contextlib
import datetime
import json
import platform
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import touchfile
from benchmarks import figures, pg_figures, report, workers
from benchmarks.contenders import CONTENDERS
from benchmarks.stats import LoadMeter

RESULTS = Path(__file__).resolve().parent / "results"

STEPS: list[tuple[str, Callable[[figures.Bench], Any]]] = [
    ("c_floor", figures.c_floor),
    ("uncontended", figures.uncontended),
    ("handoff", figures.handoff),
    ("overshoot", figures.overshoot),
    ("cancel", figures.cancel),
    ("cpu", figures.cpu),
    ("throughput", figures.throughput),
    ("readers_writer", figures.readers_writer),
    ("many_waiters", figures.many_waiters),
    ("command_line", figures.command_line),
    ("asyncio", figures.asyncio_twins),
    *pg_figures.STEPS,
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions() -> dict[str, str]:
    out = {"touchfile": touchfile.__version__}
    for name in ("filelock", "portalocker", "fasteners"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=doc)
    parser.add_argument("--quick", action="store_true", help="few samples: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write (%(default)s)")
    names = [name for name, _ in STEPS]
    parser.add_argument(
        "--only", metavar="FIGURE", action="append", choices=names, help=f"one of {names}"
    )
    args = parser.parse_args(argv)

    if not _native_available():
        log(
            f"error: touchfile's native core is not available (imported {touchfile.__file__}); "
            "install touchfile first: pip install '.[bench]'"
        )
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:  # 1,000 waiting threads' descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))

    cfg = figures.QUICK if args.quick else figures.FULL
    contenders = [c for c in CONTENDERS if c.available()]
    notes = [
        f"{c.label} is not installed (pip install '.[bench]'): left out."
        for c in CONTENDERS
        if not c.available()
    ]
    t_start = time.monotonic()
    date = datetime.datetime.now(datetime.timezone.utc)
    res: report.Results = {}
    load: dict[str, dict[str, float]] = {}
    tmp = tempfile.mkdtemp(prefix="touchfile-bench-")
    size = max(*figures.HAMMERS, figures.READERS + 1)
    log(f"starting {size} worker processes ...")
    pool = workers.start_pool(size)
    try:
        for w in pool:
            w.call(workers.ping)
        bench = figures.Bench(cfg, tmp, contenders, pool, random.Random(20261123))
        steps = [(n, fn) for n, fn in STEPS if not args.only or n in args.only]
        for i, (name, fn) in enumerate(steps, 1):
            log(f"{i}/{len(steps)} {name} ...")
            meter = LoadMeter()
            bench.figure = name
            began = time.monotonic()
            out = fn(bench)
            if out:  # {}: a section left out (see its notes)
                res.update(out if name == "asyncio" else {name: out})
            load[name] = meter.read()
            log(f"    {name}: {time.monotonic() - began:.1f} s")
    finally:
        pg_figures.stop()
        for w in pool:
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)

    runtime = time.monotonic() - t_start
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    meta: dict[str, Any] = {
        "date": date.strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions(),
        "command": command,
        "runtime_s": runtime,
        "load": load,
        "config": cfg.__dict__,
    }
    if pg_figures.INFO:
        meta["versions"].update({k: v for k, v in pg_figures.INFO.items() if k != "config"})
        meta["pg_config"] = pg_figures.INFO["config"]
    notes += figures.NOTES + pg_figures.NOTES
    busy = ", ".join(f"{k} {v['busy_cores']:.1f} ({v['steal_cores']:.2f})" for k, v in load.items())
    notes.append(
        f"Cores busy while each figure ran, this run's own processes included (and cores "
        f"taken by the hypervisor, steal), of {os.cpu_count()}: {busy}."
    )
    keys = [c.key for c in contenders]
    md = report.markdown(res, meta, keys, notes)
    sys.stdout.write(md)
    sys.stdout.flush()

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (date.strftime("%Y-%m-%d") + ("-quick" if args.quick else ""))
    stem.with_suffix(".md").write_text(md, encoding="utf-8")
    data = report.to_json(res, meta)
    text = json.dumps(data, indent=1, allow_nan=False)
    stem.with_suffix(".json").write_text(text + "\n", encoding="utf-8")
    written = [stem.with_suffix(".md"), stem.with_suffix(".json")]
    pngs = report.plots(res, stem, f"touchfile benchmarks, {meta['date']}, {meta['cpu']}")
    if not pngs:
        log("matplotlib is not installed (pip install '.[bench]'): no plots")
    for path in [*written, *pngs]:
        log(f"wrote {path}")
    errors = sum(
        len(s.errors) for fig in res.values() for row in fig.values() for s in row.values()
    )
    if errors:
        log(f"{errors} error(s) during the run: see the notes column")
        return 1
    return 0


def _native_available() -> bool:
    with touchfile.TouchFile() as tf:
        return tf.native


if __name__ == "__main__":
    sys.exit(main())
