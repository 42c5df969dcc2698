"""The library's version (read by the build from this file: pyproject.toml)."""

__version__ = "0.1.0"
