"""Readers and a writer share a cache file across processes, guarded by one lock file.

    python examples/cache_readers_writer.py

A JSON cache file is guarded by a separate lock file. Several reader processes
take the SHARED lock and read the cache at the same time; one writer process
takes the EXCLUSIVE lock and rewrites the cache in place, slowly (truncate,
write half, pause, write the rest). The lock alone keeps readers from ever
seeing a half-written cache: no temporary file, no rename.

Every process reports when it held the lock (time.monotonic(), one clock for
the whole machine) and what it read; the parent then checks that readers held
the lock together, that no reader held it while the writer did, and that every
read was a whole cache (its checksum matches). Exits 1 if any of that broke.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from touchfile import EXCLUSIVE, TouchFile

# The schedule (seconds from a common start): each reader reads every 0.2 s,
# keeping the shared lock 0.1 s; the writer asks for the exclusive lock while
# the readers hold theirs (so it waits for them), and keeps it long enough
# that the readers' next round waits for it.
READERS = 4
READS = 8
READ_EVERY = 0.2
READ_HOLD = 0.1
WRITES = 4
WRITE_EVERY = 0.4
WRITE_FIRST = 0.05
WRITE_PAUSE = 0.15  # the writer's pause halfway through a rewrite
TIMEOUT = 5.0  # no lock wait in this example comes close


def encode_cache(version: int) -> str:
    """A cache of the given version: some data, and a checksum over all of it."""
    data = {f"key{i}": f"value {i} of version {version}" * 4 for i in range(50)}
    body = json.dumps({"version": version, "data": data}, sort_keys=True)
    return json.dumps({"body": body, "sha256": hashlib.sha256(body.encode()).hexdigest()})


def decode_cache(text: str) -> int | None:
    """The version of a whole cache, or None if the text is torn or corrupt."""
    try:
        outer = json.loads(text)
        body: str = outer["body"]
        if hashlib.sha256(body.encode()).hexdigest() != outer["sha256"]:
            return None
        version: int = json.loads(body)["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return version


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def reader(lock_path: str, cache_path: str, start: float) -> None:
    """Each round: hold the shared lock, read the cache, keep using it, read it again."""
    with TouchFile(lock_path) as tf:
        for i in range(READS):
            sleep_until(start + i * READ_EVERY)
            asked = time.monotonic()
            with tf.shared_lock(timeout=TIMEOUT):
                held = time.monotonic()
                first = Path(cache_path).read_text()
                time.sleep(READ_HOLD)  # readers use the cache while holding the lock
                again = Path(cache_path).read_text()
                until = time.monotonic()
            version = decode_cache(first)
            state = "torn" if version is None else "ok"
            if again != first:
                state = "changed-while-shared"
            print(f"hold shared {asked!r} {held!r} {until!r} {version} {state}", flush=True)


def writer(lock_path: str, cache_path: str, start: float) -> None:
    """Each round: hold the exclusive lock and rewrite the cache in place, slowly."""
    with TouchFile(lock_path) as tf:
        for i in range(WRITES):
            sleep_until(start + WRITE_FIRST + i * WRITE_EVERY)
            asked = time.monotonic()
            with tf.lock(EXCLUSIVE, timeout=TIMEOUT):
                held = time.monotonic()
                text = encode_cache(i + 1)
                with open(cache_path, "r+") as f:
                    f.truncate(0)
                    f.write(text[: len(text) // 2])
                    f.flush()  # a reader without the lock would see this half
                    time.sleep(WRITE_PAUSE)
                    f.write(text[len(text) // 2 :])
                until = time.monotonic()
            print(f"hold exclusive {asked!r} {held!r} {until!r} {i + 1} written", flush=True)


@dataclass
class Hold:
    """One stretch of time during which a process held the lock."""

    who: str
    kind: str
    asked: float
    start: float
    end: float
    version: int | None
    state: str


def parse_holds(who: str, out: str) -> list[Hold]:
    holds = []
    for line in out.splitlines():
        if line.startswith("hold "):
            _, kind, asked, start, end, version, state = line.split()
            v = None if version == "None" else int(version)
            holds.append(Hold(who, kind, float(asked), float(start), float(end), v, state))
    return holds


def overlaps(a: Hold, b: Hold) -> bool:
    return a.start < b.end and b.start < a.end


def most_at_once(holds: list[Hold]) -> int:
    """The largest number of holds in progress at the same moment."""
    events = sorted([(h.start, 1) for h in holds] + [(h.end, -1) for h in holds])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def run_children(lock_path: str, cache_path: str) -> dict[str, str]:
    """Start the readers and the writer, release them together, return their outputs."""
    roles = [f"reader-{i}" for i in range(1, READERS + 1)] + ["writer"]
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for who in roles:
            role = "--writer" if who == "writer" else "--reader"
            procs[who] = subprocess.Popen(
                [sys.executable, __file__, role, lock_path, cache_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        for proc in procs.values():  # each says "ready" once it has imported touchfile
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a child process failed to start")
        start = time.monotonic() + 0.1
        outputs = {}
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write(f"{start!r}\n")
            proc.stdin.flush()
        for who, proc in procs.items():
            outputs[who], _ = proc.communicate(timeout=30)
            if proc.returncode != 0:
                raise RuntimeError(f"{who} exited with status {proc.returncode}")
        return outputs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="touchfile-cache-"))
    try:
        lock_path, cache_path = str(tmp / "cache.lock"), str(tmp / "cache.json")
        with TouchFile(lock_path) as tf, tf.lock(EXCLUSIVE, timeout=TIMEOUT):
            Path(cache_path).write_text(encode_cache(0))
        print(f"cache {cache_path}, guarded by {lock_path}")
        print(f"{READERS} reader processes (shared lock), 1 writer process (exclusive lock)")
        began = time.monotonic()
        outputs = run_children(lock_path, cache_path)
        took = time.monotonic() - began
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    holds = [h for who, out in outputs.items() for h in parse_holds(who, out)]
    reads = [h for h in holds if h.kind == "shared"]
    writes = [h for h in holds if h.kind == "exclusive"]
    for w in writes:
        print(
            f"[writer] waited {w.start - w.asked:.3f} s for the readers, then rewrote"
            f" the cache to version {w.version} in {w.end - w.start:.3f} s"
        )
    bad_reads = [r for r in reads if r.state != "ok"]
    clashes = [(r, w) for r in reads for w in writes if overlaps(r, w)]
    together = most_at_once(reads)
    versions = sorted({r.version for r in reads if r.version is not None})

    good = len(reads) - len(bad_reads)
    print(f"reads: {len(reads)}, whole and unchanged: {good}, torn or changed: {len(bad_reads)}")
    print(f"versions the readers saw: {', '.join(map(str, versions))}")
    print(f"readers holding the shared lock together: up to {together} at once")
    print(f"longest reader wait (for the writer): {max(r.start - r.asked for r in reads):.3f} s")
    print(f"reader/writer overlaps: {len(clashes)}")
    print(f"took {took:.2f} s")

    failures = []
    if len(reads) != READERS * READS or len(writes) != WRITES:
        failures.append("some reads or writes are missing")
    if bad_reads:
        failures.append(f"{len(bad_reads)} reads saw a torn or changing cache")
    if clashes:
        failures.append(f"{len(clashes)} reads overlapped a write")
    if together < 2:
        failures.append("readers never held the shared lock together")
    for failure in failures:
        print(f"FAILED: {failure}")
    if failures:
        return 1
    print("OK: readers shared the lock, the writer had it alone, and no read was torn")
    return 0


def child(role: str, lock_path: str, cache_path: str) -> None:
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    (writer if role == "--writer" else reader)(lock_path, cache_path, start)


if __name__ == "__main__":
    if sys.argv[1:2] in (["--reader"], ["--writer"]):
        child(sys.argv[1], sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
