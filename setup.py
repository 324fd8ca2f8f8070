# The C accumulator is compiled at install time by cffi (out-of-line API mode); everything
# else about the package lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["csrc/build_accumulate.py:ffibuilder"])
