# The native core is a cffi extension; setuptools builds it from here.
#
# Without a C compiler (or when its build fails), touchfile still installs:
# waits then poll (README: Fallback: polling), and `touchfile --version` says
# so. TOUCHFILE_REQUIRE_NATIVE=1 makes a failed build an error instead, for
# packagers who ship the native core.
import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalNative(build_ext):  # type: ignore[misc]  # (setuptools' own, untyped here)
    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:  # no compiler (OSError), CompileError, LinkError
            if os.environ.get("TOUCHFILE_REQUIRE_NATIVE", "") == "1":
                raise
            print(
                f"\ntouchfile: the native core could not be built ({error});\n"
                "touchfile: installing without it: waits will poll (1 to 10 ms) rather than "
                "block in the kernel.\n"
                "touchfile: install a C compiler (and the Python headers) for native waits, "
                "or set TOUCHFILE_REQUIRE_NATIVE=1 to make this an error.\n",
                file=sys.stderr,
            )


setup(cffi_modules=["_native/build_ffi.py:ffi"], cmdclass={"build_ext": OptionalNative})
