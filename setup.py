"""Build script for the one C extension; everything else is in pyproject.toml.

``cityseg.data._unfilter`` speeds up decoding label PNGs (see its source). It is optional: where
it cannot be compiled, pip still installs cityseg and label maps are decoded with pyspng/Pillow.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cityseg.data._unfilter", ["src/cityseg/data/_unfilter.c"], optional=True)])
