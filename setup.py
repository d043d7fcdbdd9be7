# The native core is a cffi extension; setuptools builds it from here.
from setuptools import setup

setup(cffi_modules=["_native/build_ffi.py:ffi"])
