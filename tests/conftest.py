"""Fixtures: both wait modes, holders that are always reaped, a PostgreSQL server."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Holder
from pgserver import External, Server, find_bin_dir

import touchfile._native


def pytest_configure(config: pytest.Config) -> None:
    if not touchfile._native.AVAILABLE:
        pytest.exit(
            f"touchfile's native core is not built (imported from {touchfile.__file__}): "
            "install the package (pip install .) and run plain `pytest` from the project root",
            returncode=4,
        )


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    """Start holders with ``holders.append(Holder(...))``; all are reaped at the end."""
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.stop()


@pytest.fixture(params=["native", "poll"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test that waits runs against the native wait and the polling fallback
    (it asks for mode, or uses it with @pytest.mark.usefixtures("mode")).

    TOUCHFILE_NATIVE is read when a TouchFile is made, and inherited by
    child processes; "1" fails loudly if the native core is not built.
    """
    param = str(request.param)
    monkeypatch.setenv("TOUCHFILE_NATIVE", "1" if param == "native" else "0")
    return param


@pytest.fixture
def lock_path(tmp_path: Path) -> str:
    return str(tmp_path / "test.lock")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server | External]:
    """The session's PostgreSQL server: TOUCHFILE_TEST_DSN's if set, else a
    throwaway one (under /tmp, not pytest's 0700 directories, which the
    postgres user could not enter when we are root).

    Without PostgreSQL installed, a test that needs it fails in CI (CI set),
    and is skipped elsewhere.
    """
    dsn = os.environ.get("TOUCHFILE_TEST_DSN")
    if dsn:
        yield External(dsn)
        return
    if find_bin_dir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    base_dir = tempfile.mkdtemp(prefix="touchfile-pg-")
    os.chmod(base_dir, 0o755)
    server = Server.start(base_dir)
    try:
        yield server
    finally:
        server.stop()
        os.rmdir(base_dir)


@pytest.fixture
def pg_dsn(pg_server: Server | External) -> str:
    """The libpq DSN of the session's PostgreSQL server (over its Unix socket)."""
    return pg_server.dsn


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests run in polling mode get the keyword poll_mode (so that .ci/sanitize,
    which is about the native core, can leave them out with -k "not poll_mode")."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("mode") == "poll":
            item.add_marker(pytest.mark.poll_mode)
