"""The project's card: what pyproject.toml cannot say. Metadata, dependencies and the two
console scripts are in pyproject.toml; this adds the optional C extension."""

from setuptools import Extension, setup

setup(
    # C versions of hot pure-Python functions (wmproxy/prot/_speedups.c); optional: where no C
    # compiler or Python headers are found, wmproxy installs and runs on the Python ones.
    ext_modules=[Extension("wmproxy.prot._speedups", ["wmproxy/prot/_speedups.c"], optional=True)],
)
