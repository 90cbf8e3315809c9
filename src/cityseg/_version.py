"""The package's version: one owner at the bottom of the import graph (it imports nothing), read by
``cityseg/__init__.py``, the checkpoints, the exports and pyproject.toml (setuptools' dynamic version)."""

__version__ = "0.1.0"
