"""Installing touchfile: without a C compiler it installs and polls; with
TOUCHFILE_REQUIRE_NATIVE=1 a failed build of the native core is an error.

Each test builds touchfile from a copy of the sources in a fresh virtual
environment, with pip fetching the build requirements (setuptools, cffi) from
the package index, as `pip install .` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sources(tmp_path: Path) -> Path:
    """A copy of what `pip install .` builds from (never the checkout: pip
    would leave its build directory there)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("_native", "touchfile", "setup.py", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name)
    for built in src.glob("touchfile/_core*"):
        built.unlink()
    return src


def _install_without_a_compiler(
    tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    empty = tmp_path / "no-compiler"  # PATH: no gcc, no cc
    empty.mkdir()
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-v", "--no-cache-dir", str(_sources(tmp_path))],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": str(empty), **env},
    )
    return proc, venv


def test_installs_without_a_compiler_and_polls(tmp_path: Path) -> None:
    """No C compiler: the install succeeds, says why during the build, and waits
    poll (tf.native is False; touchfile --version says so)."""
    proc, venv = _install_without_a_compiler(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "touchfile: the native core could not be built" in proc.stdout + proc.stderr
    code = "from touchfile import TouchFile\nwith TouchFile() as tf: print(tf.native)"
    native = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60,
        cwd="/",
    )  # fmt: skip
    assert (native.stdout, native.stderr) == ("False\n", "")
    version = subprocess.run(
        [str(venv / "bin" / "touchfile"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.endswith("(polling waits: the native core is not built)\n")
    # The fall back to polling is a WARNING of the "touchfile" logger, once.
    code = (
        "import logging\nlogging.basicConfig(format='%(name)s %(levelname)s: %(message)s')\n"
        "from touchfile import TouchFile\nTouchFile().close()\nTouchFile().close()"
    )
    logged = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60,
        cwd="/",
    )  # fmt: skip
    assert logged.stderr == (
        "touchfile WARNING: touchfile's native core is not built: lock waits poll, up to 10 ms "
        "late (install touchfile where a C compiler is available for waits in the kernel)\n"
    )


def test_require_native_makes_a_failed_build_an_error(tmp_path: Path) -> None:
    """TOUCHFILE_REQUIRE_NATIVE=1, for packagers: no compiler fails the install."""
    proc, venv = _install_without_a_compiler(tmp_path, TOUCHFILE_REQUIRE_NATIVE="1")
    assert proc.returncode != 0
    assert "touchfile: the native core could not be built" not in proc.stdout + proc.stderr
    assert not list(venv.glob("lib/python*/site-packages/touchfile"))
