"""The package as a user gets it: the README's first example runs against
``tickstream --demo`` and prints ticks in order; the types are shipped (``py.typed``)
and the example and the package pass ``mypy --strict``."""

from __future__ import annotations

import importlib.resources
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .support import BIN, Process, free_port, until

README = Path(__file__).resolve().parents[1] / "README.md"


def first_example() -> str:
    found = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert found, "the README has a python block"
    return found[1]


async def test_the_readme_first_example_prints_ticks_from_the_demo(tmp_path: Path) -> None:
    example = tmp_path / "first.py"
    example.write_text(first_example())
    assert "from tickstream import Client" in example.read_text()
    # The demo as a newcomer runs it: no Redis, dev mode, the reader token printed.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (
        "REDIS_URL", "TICKSTREAM_JWT_SECRET", "TICKSTREAM_JWT_PUBLIC_KEY", "TICKSTREAM_HMAC_SECRET",
        "TICKSTREAM_INGEST_TOKEN")}
    demo = Process([str(BIN), "--demo"], {**env, "TICKSTREAM_LISTEN": f"127.0.0.1:{port}", "TICKSTREAM_LOG": "warn"})
    first = None
    try:
        token = await until("the demo prints its reader token",
                            lambda: (re.search(r"Reader token:\s+(\S+)", demo.output) or [None, None])[1])
        first = Process([sys.executable, str(example)],
                        {**env, "TICKSTREAM_TOKEN": token, "TICKSTREAM_URL": f"http://127.0.0.1:{port}"},
                        cwd=tmp_path)
        await until("the example prints ticks", lambda: len(re.findall(r"^tick seq=\d+ ", first.output, re.M)) >= 5, 30)
        seqs = [int(s) for s in re.findall(r"^tick seq=(\d+) ", first.output, re.M)]
        assert all(b == a + 1 for a, b in zip(seqs, seqs[1:])), f"printed in order, once: {first.output}"
    finally:
        if first is not None:
            first.kill()
        demo.kill()


def test_the_types_ship_and_pass_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    assert importlib.resources.files("tickstream").joinpath("py.typed").is_file()
    example = tmp_path / "first.py"
    example.write_text(first_example())
    # Run outside the source tree: what is checked is the installed package.
    config = ["--config-file", str(README.parent / "pyproject.toml")]  # pandas has no stubs: not checked
    for target in ([str(example)], [*config, "-p", "tickstream"]):
        run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", *target],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
