"""Fixtures: both wait modes, and holders that are always reaped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Holder

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests run in polling mode get the keyword poll_mode (so that .ci/sanitize,
    which is about the native core, can leave them out with -k "not poll_mode")."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("mode") == "poll":
            item.add_marker(pytest.mark.poll_mode)
