"""The PostgreSQL figures' Markdown (with the project's targets) and their plot."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.pg_contenders import PG_BY_KEY
from benchmarks.stats import US, Series, fmt_ratio, fmt_time

TITLES = {
    "pg_uncontended": "P1. PostgreSQL: uncontended acquire+release over a Unix socket (per op)",
    "pg_handoff": "P2. PostgreSQL handoff: a holder in another process releases -> our blocked "
    "waiter holds",
    "pg_overshoot": "P3. PostgreSQL deadline overshoot, waiter in a worker thread",
    "pg_cancel": "P4. PostgreSQL cancel latency: cancel from another thread -> the waiter's "
    "acquire returns",
    "pg_waiters": "P5. PostgreSQL: threads queued on one lock, granted in turn (time per grant)",
}
COLORS = {
    "touchfile": "tab:blue",
    "floor": "black",
    "pals": "tab:green",
    "tooz": "tab:olive",
    "sqlalchemy_dlock": "tab:pink",
}
DISTS = {
    "touchfile": "touchfile",
    "floor": "psycopg",
    "pals": "pals",
    "tooz": "tooz",
    "sqlalchemy_dlock": "sqlalchemy-dlock",
}
TOUCHFILE = "touchfile"


def label(key: str) -> str:
    return PG_BY_KEY[key].label if key in PG_BY_KEY else key


def _total(s: Series) -> float:
    """From the release to the last grant: the median over rounds."""
    totals = s.extra.get("totals", [])
    return sorted(totals)[len(totals) // 2] if totals else math.nan


def _median(s: Series) -> float:
    return s.median


def _p99(s: Series) -> float:
    return s.p99


@dataclass(frozen=True)
class Target:
    """A stated target for touchfile: stat at most `bound` times the floor's (ratio) or seconds."""

    stat: Callable[[Series], float]
    bound: float
    ratio: bool
    text: str

    def check(self, row: dict[str, Series]) -> str:
        if TOUCHFILE not in row:
            return "—"
        value = self.stat(row[TOUCHFILE])
        if self.ratio:
            floor = self.stat(row["floor"]) if "floor" in row else math.nan
            value = value / floor if floor and not math.isnan(floor) else math.nan
        if math.isnan(value):
            return f"{self.text}: —"
        return f"{self.text}: {'met' if value <= self.bound else '**MISSED**'}"


TARGETS: dict[tuple[str, str], list[Target]] = {  # by (figure, case); "*": every case
    ("pg_uncontended", "*"): [Target(_median, 1.5, True, "≤ 1.5x floor")],
    ("pg_handoff", ""): [Target(_median, 1.5, True, "≤ 1.5x floor")],
    ("pg_overshoot", "10 ms"): [Target(_p99, 0.002, False, "p99 < 2 ms")],
    ("pg_overshoot", "100 ms"): [Target(_p99, 0.002, False, "p99 < 2 ms")],
    ("pg_cancel", ""): [
        Target(_median, 1.2, True, "≤ 1.2x floor"),
        Target(_p99, 0.005, False, "p99 < 5 ms"),
    ],
}


def _targets(figure: str, case: str) -> list[Target]:
    return TARGETS.get((figure, case), TARGETS.get((figure, "*"), []))


def _cell(s: Series, text: str) -> str:
    return "—" if "cannot" in s.extra else text


def _notes(s: Series) -> str:
    notes = []
    if "cannot" in s.extra:
        notes.append(f"cannot: {s.extra['cannot']}")
    if s.errors:
        kinds = sorted(set(s.errors))
        notes.append(f"**{len(s.errors)} ERROR(S)**: " + "; ".join(kinds[:2]))
    if s.extra.get("dropped_not_blocked"):
        dropped = s.extra["dropped_not_blocked"]
        notes.append(f"{dropped} round(s) dropped (waiter maybe not blocked yet)")
    if s.extra.get("poll_s"):
        notes.append(f"polls every {fmt_time(s.extra['poll_s'])}")
    if s.extra.get("side_by_side"):
        notes.append(f"each wait beside one of {', '.join(s.extra['side_by_side'])}")
    if s.extra.get("cancel_call_s"):
        calls = sorted(s.extra["cancel_call_s"])
        notes.append(f"the cancel call itself returned after {fmt_time(calls[len(calls) // 2])}")
    if s.extra.get("unpinned"):
        notes.append(s.extra["unpinned"])
    if s.extra.get("note"):
        notes.append(s.extra["note"])
    return "; ".join(notes)


Column = tuple[str, Callable[[Series], str]]


def _columns(figure: str) -> list[Column]:
    cols: list[Column] = [
        ("median", lambda s: _cell(s, fmt_time(s.median))),
        ("p99", lambda s: _cell(s, fmt_time(s.p99))),
        ("n", lambda s: _cell(s, str(len(s.samples)))),
    ]
    if figure == "pg_uncontended":
        return [*cols[:2], ("ops", lambda s: str(len(s.samples) * s.extra["ops_per_batch"]))]
    if figure == "pg_waiters":
        total: Column = ("release -> last grant", lambda s: fmt_time(_total(s)))
        return [("per grant, median", cols[0][1]), ("p99", cols[1][1]), total, cols[2]]
    return cols


def figure_table(figure: str, cases: dict[str, dict[str, Series]]) -> list[str]:
    """One figure's Markdown table: every contender, its ratios to the floor, the targets."""
    cols = _columns(figure)
    multi = len(cases) > 1 or "" not in cases
    head = (["case"] if multi else []) + ["contender"] + [c[0] for c in cols]
    head += ["median ÷ floor", "p99 ÷ floor"]
    if figure == "pg_waiters":
        head.append("total ÷ floor")
    head += ["target (touchfile)", "notes"]
    lines = [f"### {TITLES.get(figure, figure)}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for case, row in cases.items():
        floor = row.get("floor", Series())
        targets = _targets(figure, case)
        for key, s in row.items():
            cells = ([case] if multi else []) + [label(key)]
            cells += [fn(s) for _, fn in cols]
            cells += [fmt_ratio(s.median, floor.median), fmt_ratio(s.p99, floor.p99)]
            if figure == "pg_waiters":
                cells.append(fmt_ratio(_total(s), _total(floor)))
            cells.append("; ".join(t.check(row) for t in targets) if key == TOUCHFILE else "")
            cells.append(_notes(s))
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


# the summary ------------------------------------------------------------------------------------

Stat = Callable[[Series], float]
# (title, figure, case, stat, which of the case's targets applies); case "each": a row for
# each case the figure has, "first": its first case.
SUMMARY: list[tuple[str, str, str, Stat, int | None]] = [
    ("P1. uncontended acquire+release, {case}", "pg_uncontended", "each", _median, 0),
    ("P2. handoff from another process, median", "pg_handoff", "", _median, 0),
    ("P2. handoff, p99", "pg_handoff", "", _p99, None),
    ("P3. deadline overshoot p99, 10 ms timeout", "pg_overshoot", "10 ms", _p99, 0),
    ("P3. deadline overshoot p99, 100 ms timeout", "pg_overshoot", "100 ms", _p99, 0),
    ("P4. cancel latency, median", "pg_cancel", "", _median, 0),
    ("P4. cancel latency, p99", "pg_cancel", "", _p99, 1),
    ("P5. {case}: time per grant, median", "pg_waiters", "first", _median, None),
    ("P5. {case}: release -> last grant", "pg_waiters", "first", _total, None),
]


def _keys(res: dict[str, dict[str, dict[str, Series]]]) -> list[str]:
    seen: dict[str, None] = {}
    for figure, cases in res.items():
        if figure in TITLES:
            for row in cases.values():
                seen.update(dict.fromkeys(row))
    return [k for k in PG_BY_KEY if k in seen]


def _summary_row(
    title: str, row: dict[str, Series], stat: Stat, target: Target | None, keys: list[str]
) -> str:
    values = {k: stat(row[k]) if k in row else math.nan for k in keys}
    cells = [title]
    for k in keys:
        cannot = k in row and "cannot" in row[k].extra
        cells.append("— (cannot)" if cannot else fmt_time(values[k]))
    cells.append(fmt_ratio(values.get(TOUCHFILE, math.nan), values.get("floor", math.nan)))
    cells.append(target.check(row) if target else "")
    return "| " + " | ".join(cells) + " |"


def summary(res: dict[str, dict[str, dict[str, Series]]]) -> list[str]:
    """The PostgreSQL headline figures, one column per contender; [] if none ran."""
    keys = _keys(res)
    if not keys:
        return []
    head = ["figure", *(label(k) for k in keys), "touchfile ÷ floor", "target (touchfile)"]
    lines = [
        "## PostgreSQL summary",
        "",
        "Advisory locks over the server's Unix socket. Medians unless a row says otherwise; "
        "ratios are of the values shown.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for title, figure, which, stat, t in SUMMARY:
        cases = res.get(figure, {})
        for case in {"each": list(cases), "first": list(cases)[:1]}.get(which, [which]):
            if cases.get(case):
                target = _targets(figure, case)[t] if t is not None else None
                lines.append(_summary_row(title.format(case=case), cases[case], stat, target, keys))
    lines += ["", "How each waits:", ""]
    lines += [
        "| contender | version | a wait without a deadline | a deadline | cancel |",
        "|---|---|---|---|---|",
    ]
    for k in keys:
        c = PG_BY_KEY[k]
        version = "?"
        with contextlib.suppress(metadata.PackageNotFoundError):
            version = metadata.version(DISTS[k])
        lines.append(
            f"| {c.label} | {version} | {c.waits} | {c.deadline} | {c.cancel or c.cancels_by} |"
        )
    return [*lines, ""]


# the plot -------------------------------------------------------------------------------------


def plots(res: dict[str, dict[str, dict[str, Series]]], stem: Path, title: str) -> list[Path]:
    """STEM-postgres.png: ECDFs of handoff, overshoot, cancel and time per grant."""
    panels = [
        ("pg_handoff", "", "handoff latency"),
        ("pg_overshoot", "10 ms", "deadline overshoot, 10 ms timeout"),
        ("pg_cancel", "", "cancel latency"),
        ("pg_waiters", "*", "time per grant, threads queued"),
    ]
    found = []
    for figure, case, what in panels:
        cases = res.get(figure, {})
        case = next(iter(cases), "") if case == "*" else case
        if case in cases:
            found.append((cases[case], f"{what} ({case})" if figure == "pg_waiters" else what))
    if not found:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return []
    fig, axes = plt.subplots(1, len(found), figsize=(5 * len(found), 4.5), squeeze=False)
    legend: dict[str, Any] = {}
    for ax, (row, what) in zip(axes[0], found):
        for key, s in row.items():
            xs = sorted(max(x, US) for x in s.samples)  # an early return shows at 1 µs
            if not xs:
                continue
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step([x * 1000 for x in xs], ys, where="post", label=label(key),
                    color=COLORS.get(key, "grey"),
                    linewidth=2.2 if key == TOUCHFILE else 1.4)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow decade's labels overlap
        ax.set_xlabel(f"{what} (ms, log scale)")
        ax.set_ylabel("fraction of samples at or below")
        ax.set_title(what)
        ax.grid(True, which="both", alpha=0.3)
        for handle, text in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(text, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=9)
    fig.suptitle(f"PostgreSQL advisory locks: {title}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = stem.with_name(f"{stem.name}-postgres.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
