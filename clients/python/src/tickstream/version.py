"""The library's version (read by the build from this file: pyproject.toml)."""

__version__ = "0.1.0"

#: What this library says it is, in its requests' User-Agent.
USER_AGENT = f"tickstream-python/{__version__}"
