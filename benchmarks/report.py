"""What a run prints and writes: Markdown tables, raw JSON, PNG plots."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from benchmarks import pg_report
from benchmarks.contenders import BY_KEY
from benchmarks.stats import US, Series, fmt_rate, fmt_ratio, fmt_time

Results = dict[str, dict[str, dict[str, Series]]]  # figure -> case -> contender -> samples

TITLES = {
    "c_floor": "0. touchfile's native core in plain C, with no Python (benchmarks/floor.c)",
    "uncontended": "1. Uncontended acquire+release, same file, same process (per op)",
    "handoff": "2. Handoff: a holder in another process releases -> our blocked waiter holds",
    "overshoot": "3. Deadline overshoot, waiter in a worker thread",
    "cancel": "4. Cancel latency: cancel() -> the waiter's acquire returns",
    "cpu": "5. CPU burned per second of waiting (whole process)",
    "throughput": "6. Contention: N processes take one exclusive lock back to back",
    "readers_writer": "7. Readers/writer: 8 shared readers, 1 writer; the writer's wait",
    "many_waiters": "8. Deadline accuracy with many waiting threads (lateness)",
    "command_line": "9. Command line, lock free: wall time per run",
    "asyncio handoff": "2a. asyncio handoff: a task awaits the lock another process releases",
    "asyncio cancel": "4a. asyncio cancel: task.cancel() -> the task's except CancelledError",
}
CLI_LABELS = {
    "native": "`touchfile -w 1 L -- true`",
    "floor": "`flock -w 1 L true` (util-linux)",
    "python": "`python -c pass` (interpreter start)",
}
ASYNC_LABELS = {"filelock": "filelock's AsyncFileLock"}
FLOOR_LABELS = {  # a floor that is not a lock
    "time.sleep": "floor: `time.sleep()`",
    "threading.Event": "floor: `threading.Event` set() -> wait() returns",
}
COLORS = {
    "native": "tab:blue",
    "writers_first": "tab:olive",
    "polling": "tab:cyan",
    "floor": "black",
    "filelock": "tab:red",
    "filelock_1ms": "tab:orange",
    "portalocker": "tab:brown",
    "fasteners": "tab:purple",
}


def label(figure: str, key: str, series: Series | None = None) -> str:
    if figure == "command_line":
        return CLI_LABELS.get(key, key)
    if figure.startswith("asyncio") and key in ASYNC_LABELS:
        return ASYNC_LABELS[key]
    if series is not None and series.extra.get("floor") in FLOOR_LABELS:
        return FLOOR_LABELS[series.extra["floor"]]
    return BY_KEY[key].label if key in BY_KEY else key


def _cpu(x: float) -> str:
    return "—" if math.isnan(x) else f"{x * 1000:.3g} ms/s"


def _share(x: float) -> str:
    return "—" if math.isnan(x) else f"{x * 100:.1f}%"


def _notes(s: Series) -> str:
    notes = []
    if s.errors:
        kinds = sorted(set(s.errors))
        notes.append(f"**{len(s.errors)} ERROR(S)**: " + "; ".join(kinds[:2]))
    for k, text in (
        ("dropped_not_blocked", "round(s) dropped (waiter maybe not blocked yet)"),
        ("later_than_5ms", "later than 5 ms"),
    ):
        if s.extra.get(k):
            notes.append(f"{s.extra[k]} {text}")
    if "starved" in s.extra:
        notes.append(f"{s.extra['starved']} of {s.extra['tries']} tries starved")
    return "; ".join(notes)


Column = tuple[str, Callable[[Series], str]]


def _columns(figure: str) -> list[Column]:
    time_cols: list[Column] = [
        ("median", lambda s: fmt_time(s.median)),
        ("p99", lambda s: fmt_time(s.p99)),
        ("n", lambda s: str(len(s.samples))),
    ]
    if figure == "uncontended":
        return [*time_cols[:2], ("ops", lambda s: str(len(s.samples) * s.extra["ops_per_batch"]))]
    if figure == "cpu":
        return [("CPU per s waited", lambda s: _cpu(s.median))]
    if figure == "throughput":
        return [
            ("acquisitions", lambda s: fmt_rate(s.median)),
            ("handovers", lambda s: fmt_rate(s.extra["handovers_per_s"])),
            ("min share", lambda s: _share(s.extra["min_share"])),
            ("max share", lambda s: _share(s.extra["max_share"])),
        ]
    if figure == "readers_writer":
        reads: Column = ("reader holds", lambda s: fmt_rate(s.extra["reads"] / s.extra["seconds"]))
        return [*time_cols[:2], ("max", lambda s: fmt_time(s.max)), time_cols[2], reads]
    if figure == "many_waiters":
        return [*time_cols[:2], ("max", lambda s: fmt_time(s.max)), time_cols[2]]
    return time_cols


def c_floor_table(cases: dict[str, dict[str, Series]]) -> list[str]:
    """Figure 0: each case in plain C, against its first row (the cheapest of its kind)."""
    lines = [f"### {TITLES['c_floor']}", ""]
    lines += ["| case | in plain C | median | p99 | n | ÷ first |", "|---|---|---|---|---|---|"]
    for case, row in cases.items():
        first = next(iter(row.values())).median
        for what, s in row.items():
            cells = [case, what, fmt_time(s.median), fmt_time(s.p99), str(len(s.samples))]
            lines.append("| " + " | ".join([*cells, fmt_ratio(s.median, first)]) + " |")
    return [*lines, ""]


def figure_table(figure: str, cases: dict[str, dict[str, Series]]) -> list[str]:
    """One figure's Markdown table: every contender, with its ratios to the floor and filelock."""
    if figure == "c_floor":
        return c_floor_table(cases)
    cols = _columns(figure)
    multi = len(cases) > 1 or "" not in cases
    head = (["case"] if multi else []) + ["contender"] + [c[0] for c in cols]
    head += ["÷ floor", "÷ filelock", "notes"]
    lines = [f"### {TITLES.get(figure, figure)}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for case, row in cases.items():
        floor = row["floor"].median if "floor" in row else math.nan
        fl = row["filelock"].median if "filelock" in row else math.nan
        for key, s in row.items():
            cells = ([case] if multi else []) + [label(figure, key, s)]
            cells += [fn(s) for _, fn in cols]
            cells += [fmt_ratio(s.median, floor), fmt_ratio(s.median, fl), _notes(s)]
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


# the summary: one row per headline figure, one column per contender -------------------------

Stat = Callable[[Series], float]


def _median(s: Series) -> float:
    return s.median


def _p99(s: Series) -> float:
    return s.p99


def _extra(name: str) -> Stat:
    return lambda s: float(s.extra[name])


def _starved(s: Series) -> float:
    return s.extra["starved"] / s.extra["tries"] if s.extra["tries"] else math.nan


SUMMARY: list[tuple[str, str, str, Stat, Callable[[float], str]]] = [
    ("1. uncontended acquire+release", "uncontended", "", _median, fmt_time),
    ("2. handoff from another process, median", "handoff", "", _median, fmt_time),
    ("2. handoff, p99", "handoff", "", _p99, fmt_time),
    ("3. deadline overshoot p99, 1 ms timeout", "overshoot", "1 ms", _p99, fmt_time),
    ("3. deadline overshoot p99, 10 ms timeout", "overshoot", "10 ms", _p99, fmt_time),
    ("3. deadline overshoot p99, 100 ms timeout", "overshoot", "100 ms", _p99, fmt_time),
    ("4. cancel latency, median", "cancel", "", _median, fmt_time),
    ("4. cancel latency, p99", "cancel", "", _p99, fmt_time),
    ("5. CPU per second of waiting", "cpu", "", _median, _cpu),
    ("6. acquisitions/s, 2 processes", "throughput", "N=2", _median, fmt_rate),
    ("6. acquisitions/s, 16 processes", "throughput", "N=16", _median, fmt_rate),
    ("6. smallest share of 16 processes", "throughput", "N=16", _extra("min_share"), _share),
    ("7. writer's wait beside 8 readers, median", "readers_writer", "", _median, fmt_time),
    ("7. writer's wait, p99", "readers_writer", "", _p99, fmt_time),
    ("7. writer's tries that starved", "readers_writer", "", _starved, _share),
    ("8. lateness p99, 100 waiting threads", "many_waiters", "100 waiters", _p99, fmt_time),
    ("8. lateness p99, 1000 waiting threads", "many_waiters", "1000 waiters", _p99, fmt_time),
    ("9. command line, wall time per run", "command_line", "", _median, fmt_time),
    ("2a. asyncio handoff, median", "asyncio handoff", "", _median, fmt_time),
    ("4a. asyncio cancel, median", "asyncio cancel", "", _median, fmt_time),
]


def summary_table(res: Results, keys: list[str]) -> list[str]:
    """The headline figures side by side; the last two columns are native's ratios.

    Where the floor column holds another baseline (time.sleep(), flock(1)),
    its cell says so.
    """
    head = ["figure", *(label("", k) for k in keys), "native ÷ floor", "native ÷ filelock"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for title, figure, case, stat, fmt in SUMMARY:
        row = res.get(figure, {}).get(case, {})
        if not row:
            continue
        values = {k: stat(row[k]) if k in row else math.nan for k in keys}
        cells = [title]
        for k in keys:
            other = row[k].extra.get("floor") if k in row else None
            cells.append(fmt(values[k]) + (f" ({other})" if other else ""))
        cells += [fmt_ratio(values["native"], values.get("floor", math.nan))]
        cells += [fmt_ratio(values["native"], values.get("filelock", math.nan))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# The performance targets touchfile holds itself to, each a ratio (or, for the
# command line, a difference) against a reference measured in the same run.
Ref = Callable[[Results], float]


def _of(figure: str, case: str, key: str, stat: Stat) -> Ref:
    def value(res: Results) -> float:
        row = res.get(figure, {}).get(case, {})
        return stat(row[key]) if key in row else math.nan

    return value


def _best_other(figure: str, case: str, stat: Stat, mine: str = "native") -> Ref:
    """The lowest value among the other contenders (touchfile's own polling included)."""

    def value(res: Results) -> float:
        row = res.get(figure, {}).get(case, {})
        others = [stat(s) for k, s in row.items() if k not in (mine, "floor", "writers_first")]
        others = [v for v in others if not math.isnan(v)]
        return min(others) if others else math.nan

    return value


def _core(case: str, stat: Stat) -> Ref:
    """Figure 0's measurement of touchfile's core in case (each case's last row)."""

    def value(res: Results) -> float:
        row = res.get("c_floor", {}).get(case, {})
        return stat(list(row.values())[-1]) if row else math.nan

    return value


def _constant(x: float) -> Ref:
    return lambda res: x


def _reads_per_s(s: Series) -> float:
    return s.extra["reads"] / s.extra["seconds"] if s.extra.get("seconds") else math.nan


@dataclass(frozen=True)
class Goal:
    """value at most bound x ref (at least, if higher; ref + bound s, if over); c, where
    there is one, is the same measurement of touchfile's own steps in plain C."""

    text: str
    value: Ref
    against: str
    ref: Ref
    bound: float
    higher: bool = False
    over: bool = False
    fmt: Callable[[float], str] = fmt_time  # the values' unit
    c: Ref | None = None


def _goals() -> list[Goal]:
    goals = []
    for case in ("1 ms", "10 ms", "100 ms"):
        p99 = _of("overshoot", case, "native", _p99)
        goals += [
            Goal(f"deadline overshoot p99, {case}", p99, "`time.sleep()`",
                 _of("overshoot", case, "floor", _p99), 1.3, c=_core(f"deadline {case}", _p99)),
            Goal(f"deadline overshoot p99, {case}", p99, "best other contender",
                 _best_other("overshoot", case, _p99), 1.0),
        ]  # fmt: skip
    for figure, title in (("cancel", "cancel"), ("asyncio cancel", "asyncio cancel")):
        goals += [
            Goal(f"{title}, median", _of(figure, "", "native", _median), "60 µs",
                 _constant(60 * US), 1.0, c=_core("cancel", _median)),
            Goal(f"{title}, p99", _of(figure, "", "native", _p99), "best other contender",
                 _best_other(figure, "", _p99), 1.0),
        ]  # fmt: skip
    goals += [
        Goal("asyncio handoff, median", _of("asyncio handoff", "", "native", _median),
             "sync handoff", _of("handoff", "", "native", _median), 1.3),
        Goal("uncontended acquire+release", _of("uncontended", "", "native", _median),
             "raw flock() pair", _of("uncontended", "", "floor", _median), 2.0,
             c=_core("uncontended", _median)),
        *(Goal(f"acquisitions/s, {n} processes", _of("throughput", f"N={n}", "native", _median),
               "floor", _of("throughput", f"N={n}", "floor", _median), 0.6, higher=True,
               fmt=fmt_rate)
          for n in (2, 16)),
        Goal("smallest share of 16 processes",
             _of("throughput", "N=16", "native", _extra("min_share")),
             "4.5% (before this target)", _constant(0.045), 1.0, higher=True, fmt=_share),
        Goal("handoff, median", _of("handoff", "", "native", _median), "floor",
             _of("handoff", "", "floor", _median), 1.5,
             c=_core("handoff", _median)),
        Goal("writer's wait beside 8 readers, p99 (prefer_writers)",
             _of("readers_writer", "", "writers_first", _p99), "filelock's ReadWriteLock",
             _of("readers_writer", "", "filelock", _p99), 1.0),
        Goal("reader holds/s beside that writer (prefer_writers)",
             _of("readers_writer", "", "writers_first", _reads_per_s),
             "filelock's ReadWriteLock", _of("readers_writer", "", "filelock", _reads_per_s),
             1.0, higher=True, fmt=fmt_rate),
        Goal("lateness p99, 1000 waiting threads",
             _of("many_waiters", "1000 waiters", "native", _p99), "`time.sleep()`",
             _of("many_waiters", "1000 waiters", "floor", _p99), 2.0),
        Goal("command line, wall time", _of("command_line", "", "native", _median),
             "`python -c pass`", _of("command_line", "", "python", _median), 0.008, over=True),
        Goal("CPU per second of waiting", _of("cpu", "", "native", _median), "floor",
             _of("cpu", "", "floor", _median), 1.2, fmt=_cpu),
    ]  # fmt: skip
    return goals


def targets_table(res: Results) -> list[str]:
    """Each target: touchfile's value, the reference's, their ratio, met or not, and
    where figure 0 has it, the same steps in plain C against the same reference."""
    lines = [
        "| target | touchfile | against | its value | ratio (or difference) | bound | "
        "| in plain C (ratio) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for goal in _goals():
        value, ref = goal.value(res), goal.ref(res)
        if math.isnan(value) or math.isnan(ref):
            continue  # a figure left out of this run
        fmt = goal.fmt
        if goal.over:
            shown, bound = fmt_time(value - ref), f"≤ +{fmt_time(goal.bound)}"
            met = value - ref <= goal.bound
        else:
            ratio = value / ref if ref else math.nan
            shown = fmt_ratio(value, ref)
            bound = f"{'≥' if goal.higher else '≤'} {goal.bound:g}x"
            met = ratio >= goal.bound if goal.higher else ratio <= goal.bound
        c = goal.c(res) if goal.c else math.nan
        in_c = "" if math.isnan(c) else f"{fmt(c)} ({fmt_ratio(c, ref)})"
        lines.append(
            f"| {goal.text} | {fmt(value)} | {goal.against} | {fmt(ref)} | {shown} | {bound} "
            f"| {'met' if met else '**missed**'} | {in_c} |"
        )
    return lines if len(lines) > 2 else []


def markdown(res: Results, meta: dict[str, Any], keys: list[str], notes: list[str]) -> str:
    summary = summary_table(res, keys)
    lines = [
        f"# touchfile benchmarks, {meta['date']}",
        "",
        f"{meta['cpu']}, {meta['cores']} cores; Linux {meta['kernel']}; Python {meta['python']}; "
        + "; ".join(f"{name} {v}" for name, v in meta["versions"].items())
        + f". `{meta['command']}`, {meta['runtime_s']:.0f} s.",
        "",
    ]
    if len(summary) > 2:  # rows beside the header: the flock() figures ran
        lines += [
            "## Summary",
            "",
            "Medians unless a row says otherwise; ratios are of the values shown.",
            "",
            *summary,
            "",
        ]
    targets = targets_table(res)
    if targets:
        lines += [
            "## Targets",
            "",
            "touchfile (native) against a reference measured in the same run.",
            "",
            *targets,
            "",
        ]
    lines += pg_report.summary(res)
    if notes:
        lines += [*(f"- {n}" for n in notes), ""]
    lines += ["## Every figure", ""]
    for figure, cases in res.items():
        table = pg_report.figure_table if figure in pg_report.TITLES else figure_table
        lines += table(figure, cases)
    return "\n".join(lines)


def to_json(res: Results, meta: dict[str, Any]) -> dict[str, Any]:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None  # strict JSON
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    figures = {
        fig: {case: {k: s.to_json() for k, s in row.items()} for case, row in cases.items()}
        for fig, cases in res.items()
    }
    return cast("dict[str, Any]", clean({"meta": meta, "figures": figures}))


# plots ---------------------------------------------------------------------------------------


def plots(res: Results, stem: Path, title: str) -> list[Path]:
    """latency, throughput and waiters PNGs next to stem; [] when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def style(fig: str, key: str, s: Series) -> dict[str, Any]:
        sleep = s.extra.get("floor") == "time.sleep"
        return {
            "label": label(fig, key, s).replace("`", ""),
            "color": COLORS.get(key, "grey"),
            "linestyle": ":" if sleep else "-",
            "linewidth": 2.2 if key == "native" else 1.4,
        }

    def ecdf(ax: Any, row: dict[str, Series], fig: str, what: str) -> None:
        for key, s in row.items():
            xs = sorted(max(x, US) for x in s.samples)  # an early wake-up shows at 1 µs
            if xs:
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step([x * 1000 for x in xs], ys, where="post", **style(fig, key, s))
        ax.set_xscale("log")
        ax.set_xlabel(f"{what} (ms, log scale)")
        ax.set_ylabel("fraction of samples at or below")
        ax.grid(True, which="both", alpha=0.3)

    panels = [
        ("handoff", "", "handoff latency"),
        ("overshoot", "10 ms", "deadline overshoot, 10 ms timeout"),
        ("readers_writer", "", "writer's wait beside 8 readers"),
    ]
    panels = [p for p in panels if p[1] in res.get(p[0], {})]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
        for ax, (name, case, what) in zip(axes[0], panels):
            ecdf(ax, res[name][case], name, what)
            ax.set_title(what)
        legend: dict[str, Any] = {}
        for ax in axes[0]:
            for handle, text in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(text, handle)
        fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=9)
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        written.append(_save(fig, stem, "latency"))

    if "throughput" in res:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        cases = res["throughput"]
        ns = [int(case.split("=")[1]) for case in cases]
        for key, first in next(iter(cases.values())).items():
            ax1.plot(ns, [cases[c][key].median for c in cases], marker="o", **style("", key, first))
            ax2.plot(ns, [cases[c][key].extra["min_share"] * n for c, n in zip(cases, ns)],
                     marker="o", **style("", key, first))  # fmt: skip
        ax1.set(xscale="log", yscale="log", xlabel="processes", ylabel="acquisitions per second")
        ax1.set_title("throughput")
        ax2.set(xscale="log", xlabel="processes", ylabel="smallest share x N (1 = fair)")
        ax2.set_title("fairness")
        for ax in (ax1, ax2):
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.grid(True, which="both", alpha=0.3)
        ax1.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        written.append(_save(fig, stem, "throughput"))

    if "many_waiters" in res:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        cases = res["many_waiters"]
        ns = [int(case.split()[0]) for case in cases]
        for key, first in next(iter(cases.values())).items():
            p99 = [cases[c][key].p99 * 1000 for c in cases]
            ax.plot(ns, p99, marker="o", **style("many_waiters", key, first))
        ax.set(xscale="log", yscale="log", xlabel="threads waiting at once",
               ylabel="lateness p99 (ms)")  # fmt: skip
        ax.set_title("deadline overshoot vs waiters")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, stem, "waiters"))
    return written + pg_report.plots(res, stem, title)


def _save(fig: Any, stem: Path, name: str) -> Path:
    import matplotlib.pyplot as plt

    path = stem.with_name(f"{stem.name}-{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
