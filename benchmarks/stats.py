"""Samples, their summaries, and how they are printed."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MS = 1e-3
US = 1e-6


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between closest ranks; NaN if empty."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Series:
    """One contender's samples in one case of one figure, with whatever else was counted."""

    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    @property
    def max(self) -> float:
        return max(self.samples, default=math.nan)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": len(self.samples),
            "median": self.median,
            "p99": self.p99,
            "max": self.max,
            "errors": self.errors,
            "extra": self.extra,
            "samples": self.samples,
        }


def fmt_time(seconds: float) -> str:
    """µs below a millisecond, ms below a second, s above; '—' for NaN."""
    if math.isnan(seconds):
        return "—"
    a = abs(seconds)
    if a < 10 * US:
        return f"{seconds / US:.2f} µs"
    if a < MS:
        return f"{seconds / US:.0f} µs"
    if a < 10 * MS:
        return f"{seconds / MS:.2f} ms"
    if a < 1.0:
        return f"{seconds / MS:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(per_second: float) -> str:
    if math.isnan(per_second):
        return "—"
    if per_second >= 100:
        return f"{per_second:,.0f}/s"
    return f"{per_second:.1f}/s"


def fmt_ratio(num: float, den: float) -> str:
    """num/den as '1.4x' (three digits below 0.1); '—' when either is missing."""
    if math.isnan(num) or math.isnan(den) or den == 0:
        return "—"
    r = num / den
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.0f}x"
    return f"{r:.{3 if r < 0.1 else 2}f}x"


def _machine_cpu() -> tuple[float, float]:
    """(CPU seconds busy, all processes; VM steal seconds) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan
    tick = float(os.sysconf("SC_CLK_TCK"))
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


class LoadMeter:
    """Cores kept busy by the whole machine (and VM steal) over a stretch of time.

    The benchmark's own worker processes count as busy too, so this says how
    loaded the machine was while a figure ran, not who loaded it.
    """

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.busy, self.steal = _machine_cpu()

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        busy, steal = _machine_cpu()
        return {
            "wall_s": wall,
            "busy_cores": (busy - self.busy) / wall,
            "steal_cores": (steal - self.steal) / wall,
        }
