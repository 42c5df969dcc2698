"""The command line, as an operator runs it: ``python -m tickstream tail|history|
candles|latest`` against the real server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .support import Server, jwt


async def cli(server: Server, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TICKSTREAM_URL": server.url, "TICKSTREAM_TOKEN": token or jwt()}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tickstream", *args], env=env,
                                   capture_output=True, text=True, timeout=60)


async def test_tail_resumes_from_its_cursor_file(server, redis, tmp_path: Path) -> None:
    channel = "cli.tail"
    await server.ingest(channel, [{"value": i, "data": {"n": i}} for i in range(12)])
    cursor = tmp_path / "cursor.json"
    first = await cli(server, "tail", channel, "--since", "0-0", "--count", "5", "--cursor-file", str(cursor))
    assert first.returncode == 0, first.stderr
    second = await cli(server, "tail", channel, "--since", "0-0", "--count", "5", "--cursor-file", str(cursor))
    assert second.returncode == 0, second.stderr
    lines = first.stdout.splitlines() + second.stdout.splitlines()
    stream = await redis.stream(channel)
    assert [re.search(r" id=(\S+)", line)[1] for line in lines] == [e["id"] for e in stream[:10]]  # type: ignore[index]
    assert lines[0].startswith("tick 20") and " seq=1 " in lines[0] and lines[0].endswith('value=0 {"n":0}')
    assert json.loads(cursor.read_text()) == {"id": stream[9]["id"], "seq": 10, "epoch": stream[9]["epoch"]}
    assert "# connected to" in first.stderr


async def test_tail_json_lines_over_sse(server) -> None:
    channel = "cli.sse"
    ids = await server.ingest(channel, [{"value": 1.5}, {"value": 2.5}])
    run = await cli(server, "tail", channel, "--since", "0-0", "--count", "2", "--json", "--sse")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(e["type"], e["id"], e["value"]) for e in events] == [("tick", ids[0], 1.5), ("tick", ids[1], 2.5)]
    assert events[0]["ts"].endswith("Z")


async def test_history_csv_is_what_redis_holds(server, redis) -> None:
    channel = "cli.history"
    await server.ingest(channel, [{"value": i, "ts": f"2026-12-06T09:00:{i:02d}Z", "data": {"volume": i}}
                                  for i in range(30)])
    run = await cli(server, "history", channel, "--csv")
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    stream = await redis.stream(channel)
    assert [(r["id"], int(r["seq"]), r["epoch"]) for r in rows] == [(e["id"], e["seq"], e["epoch"]) for e in stream]
    assert rows[3]["ts"] == "2026-12-06T09:00:03.000Z" and rows[3]["value"] == "3"
    assert json.loads(rows[3]["data"]) == {"volume": 3}
    newest = await cli(server, "history", channel, "--order", "desc", "--limit", "2")
    assert [json.loads(line)["id"] for line in newest.stdout.splitlines()] == [stream[-1]["id"], stream[-2]["id"]]


async def test_candles_csv(server) -> None:
    channel = "cli.candles"
    await server.ingest(channel, [{"value": v, "ts": f"2026-12-06T09:0{m}:1{i}Z", "data": {"volume": 1}}
                                  for m, values in enumerate([[5, 9, 4], [7]]) for i, v in enumerate(values)])
    run = await cli(server, "candles", channel, "--interval", "1m", "--csv")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "t,open,high,low,close,count,volume",
        "2026-12-06T09:00:00.000Z,5,9,4,4,3,3.0",  # volume: a sum, as the server writes it
        "2026-12-06T09:01:00.000Z,7,7,7,7,1,1.0",
    ]


async def test_latest_and_the_errors_an_operator_sees(server) -> None:
    channel = "cli.latest"
    ids = await server.ingest(channel, [{"value": 1}, {"value": 2}])
    run = await cli(server, "latest", channel)
    assert (run.returncode, json.loads(run.stdout)["id"]) == (0, ids[-1])
    none = await cli(server, "latest", "cli.nothing")
    assert (none.returncode, none.stdout.strip()) == (1, "null")
    refused = await cli(server, "tail", channel, token="not-a-jwt")
    assert refused.returncode == 1
    assert "tickstream: invalid_token: HTTP 401" in refused.stderr, refused.stderr
