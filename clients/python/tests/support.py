"""Test harness: a real redis-server and a real tickstream binary of the test's own, on
free loopback ports (never the machine's shared Redis), and the helpers the tests share.
Every process started here is killed by its pid.

    TICKSTREAM_BIN=target/debug/tickstream python -m pytest clients/python/tests
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import httpx

from tickstream import Tick

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("TICKSTREAM_BIN") or ROOT / "target/debug/tickstream").resolve()
SECRET = "client-test-secret-0123456789abcdef"
INGEST = "client-test-ingest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(what: str, fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Waits until ``fn()`` (or its awaitable) is truthy, polled every 25 ms; fails
    after ``timeout`` seconds saying what it waited for."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - kept as the last answer
            last = e
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out: {what} (last: {last!r})")


class Process:
    """A child process whose output goes to a file (``output`` reads it)."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: str | Path | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="tickstream-py-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(list(args), env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)

    @property
    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    async def signal(self, sig: int) -> int:
        """Sends ``sig`` and waits for the exit; its exit status."""
        if self.running:
            self.popen.send_signal(sig)
        return await asyncio.to_thread(self.popen.wait)

    def kill(self) -> None:
        if self.running:
            self.popen.kill()
            self.popen.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def stream_key(channel: str) -> str:
    """The stream key of a channel (docs/PROTOCOL.md §1: SHA-256 partition of 16)."""
    n = int.from_bytes(hashlib.sha256(channel.encode()).digest()[:4], "big") % 16
    return f"tickstream:{{p{n}}}:s:{channel}"


class Service:
    """A process of the test's own (a redis-server, a tickstream) on a free port:
    ``start()`` runs ``command()`` and returns once ``ready()``, failing at once with
    the process's output if it exits first."""

    name = "a service"

    def __init__(self) -> None:
        self.port = free_port()
        self.process: Process | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self.process = process = Process(*self.command())
        deadline = time.monotonic() + 20
        while True:
            if not process.running:
                raise AssertionError(f"{self.name} exited: {process.output}")
            try:
                if self.ready():
                    return
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} never became ready: {process.output}")
            time.sleep(0.025)

    async def start_again(self) -> None:
        await asyncio.to_thread(self.start)

    async def terminate(self) -> int:
        """Stops it as an operator would (SIGTERM); its exit status."""
        assert self.process is not None
        return await self.process.signal(signal.SIGTERM)

    async def kill9(self) -> int:
        assert self.process is not None
        return await self.process.signal(signal.SIGKILL)

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()


class Redis(Service):
    """A redis-server of the test's own; with ``persist``, an append-only file that
    survives a restart (a Redis restart then loses nothing)."""

    name = "redis-server"

    def __init__(self, persist: bool = False, extra: Sequence[str] = ()) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="tickstream-py-redis-")
        self.persist = persist
        self.extra = list(extra)
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return (["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
                 "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always", *self.extra],
                dict(os.environ))

    def ready(self) -> bool:
        return self.cli_sync("PING").strip() == "PONG"

    def cli_sync(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), "--raw", *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout

    async def cli(self, *args: str) -> str:
        return await asyncio.to_thread(self.cli_sync, *args)

    async def stream(self, channel: str) -> list[dict[str, Any]]:
        """The channel's stream as Redis holds it: ``[{id, seq, epoch}]`` in id order."""
        lines = [line for line in (await self.cli("XRANGE", stream_key(channel), "-", "+")).split("\n") if line]
        out = []
        for i in range(0, len(lines), 3):
            body = lines[i + 2] if i + 2 < len(lines) else ""
            seq = re.search(r'"seq":(\d+)', body)
            epoch = re.search(r'"epoch":"([^"]+)"', body)
            out.append({"id": lines[i], "seq": int(seq[1]) if seq else None, "epoch": epoch[1] if epoch else None})
        return out

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server(Service):
    """A tickstream binary on its own port and the given Redis; ``terminate()`` is a
    graceful shutdown (every socket gets 1012)."""

    name = "tickstream"

    def __init__(self, redis: Redis, env: dict[str, str] | None = None) -> None:
        super().__init__()
        self.redis = redis
        self.env = env or {}
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "TICKSTREAM_IP_RATE": "off", "TICKSTREAM_LOG": "warn", **self.env,
               "REDIS_URL": self.redis.url, "TICKSTREAM_LISTEN": f"127.0.0.1:{self.port}",
               "TICKSTREAM_JWT_SECRET": SECRET, "TICKSTREAM_INGEST_TOKEN": INGEST}
        for k in ("TICKSTREAM_HMAC_SECRET", "TICKSTREAM_JWT_PUBLIC_KEY"):
            env.pop(k, None)
        return [str(BIN)], env

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
            return bool(r.status == 200)

    async def ingest(
        self, channel: str, ticks: Iterable[dict[str, Any]], http: httpx.AsyncClient | None = None
    ) -> list[str]:
        """Posts ticks (on ``http``, else a connection of its own); their ids."""
        if http is None:
            async with httpx.AsyncClient(trust_env=False) as own:
                return await self.ingest(channel, ticks, own)
        body = [{"channel": channel, **t} for t in ticks]
        r = await http.post(self.url + "/api/v1/ingest", json=body, headers={"Authorization": f"Bearer {INGEST}"})
        if r.status_code != 201:
            raise AssertionError(f"ingest: HTTP {r.status_code} {r.text}")
        return [x["id"] for x in r.json()["results"]]

    async def metric(self, name: str) -> float:
        """The sum of the metric's samples whose line starts with ``name``."""
        async with httpx.AsyncClient(trust_env=False) as http:
            text = (await http.get(self.url + "/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def jwt(secret: str = SECRET, **claims: Any) -> str:
    """An HS256 JWT for the test secret; ``channels: ["*"]`` and one hour unless told."""
    now = int(time.time())

    def b64(value: Any) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64({"alg": "HS256", "typ": "JWT"})
    body = b64({"sub": "py-client-test", "iat": now, "exp": now + 3600, "channels": ["*"], **claims})
    sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


class Producer:
    """Posts ticks to ``server()`` (a function, so it follows restarts and switches)
    every ``every`` seconds, ``batch`` at a time, until stopped; a refused post
    (server down) is tried again. ``await stop()`` gives every id stored."""

    def __init__(self, server: Callable[[], Server], channel: str, every: float = 0.02, batch: int = 1) -> None:
        self.ids: list[str] = []
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._run(server, channel, every, batch))

    async def _run(self, server: Callable[[], Server], channel: str, every: float, batch: int) -> None:
        n = 0
        async with httpx.AsyncClient(trust_env=False) as http:  # one connection, kept
            while self._running:
                ticks = [{"value": n + i + 1, "key": f"k{n + i + 1}"} for i in range(batch)]
                try:
                    self.ids.extend(await server().ingest(channel, ticks, http))
                    n += batch
                except Exception:  # noqa: BLE001 - the server is down: again
                    pass
                await asyncio.sleep(every)

    async def stop(self) -> list[str]:
        self._running = False
        await self._task
        return self.ids


def assert_exactly_once(got: Sequence[Tick], stream: Sequence[dict[str, Any]]) -> None:
    """The contract: the ticks handed over are exactly the stream's (what it holds
    after the cursor), in order, each ``seq`` the previous + 1."""
    want = [e["id"] for e in stream]
    ids = [t.id for t in got]
    assert len(set(ids)) == len(ids), "no tick handed over twice"
    assert ids == want, "every stored tick after the cursor, in order"
    for a, b in zip(got, got[1:]):
        assert b.seq == (a.seq or 0) + 1, f"seq continuous at {b.id}"


async def first(aiter: Any, n: int) -> list[Any]:
    """The first ``n`` items of an async iterator."""
    out = []
    async for item in aiter:
        out.append(item)
        if len(out) >= n:
            break
    return out
