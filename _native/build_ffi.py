"""cffi build script for touchfile's native core (API mode, out of line).

`pip install .` runs it through setup.py's ``cffi_modules``; ``python
_native/build_ffi.py`` builds ``touchfile/_core*.so`` in place for a quick check.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "touchfile" / "_version.py").read_text())
assert VERSION is not None, "touchfile/_version.py has no __version__"

ffi = FFI()
ffi.cdef((HERE / "touchfile.h").read_text())
ffi.set_source(
    "touchfile._core",
    '#include "touchfile.h"',
    # Relative paths: setuptools refuses absolute ones in an sdist build.
    sources=[str((HERE / "touchfile.c").relative_to(ROOT))],
    include_dirs=[str(HERE.relative_to(ROOT))],
    define_macros=[("TF_VERSION", f'"{VERSION.group(1)}"')],
    extra_compile_args=["-Wall", "-Wextra", "-O2"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    ffi.compile(verbose=True)
