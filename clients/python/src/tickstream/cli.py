"""``python -m tickstream``: a quick look at a channel for operators.

  tail CHANNEL       live ticks (and gaps, candles) as they come, resumed across drops
  history CHANNEL    stored ticks, pages followed (``--csv`` for a spreadsheet)
  candles CHANNEL    OHLCV candles (``--interval 1m``, ``--csv``)
  latest CHANNEL     the newest tick

The server is ``--url`` or ``$TICKSTREAM_URL`` (default http://127.0.0.1:8080), the
token ``--token`` or ``$TICKSTREAM_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import tempfile
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence, TextIO

from .client import Client, ClientState
from .errors import TickstreamError
from .events import INTERVALS, Candle, Cursor, Event, Gap, Tick
from .link import StateInfo
from .rest import Pages

__all__ = ["main"]

TICK_CSV = ["id", "seq", "epoch", "ts", "ingest_ts", "value", "data", "event_id"]
CANDLE_CSV = ["t", "open", "high", "low", "close", "count", "volume"]


def iso(t: datetime | None) -> str:
    """RFC 3339 UTC with milliseconds, as the server writes times."""
    return "" if t is None else t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_json(event: Event) -> dict[str, Any]:
    """An event as the server's JSON frame would say it."""
    out: dict[str, Any] = {"type": event.type}
    for f in fields(event):
        value = getattr(event, f.name)
        out[f.name] = iso(value) if isinstance(value, datetime) else value
    return out


def as_text(event: Event) -> str:
    if isinstance(event, Tick):
        data = "" if event.data is None else " " + json.dumps(event.data, separators=(",", ":"))
        return f"tick {iso(event.ts)} seq={event.seq} id={event.id} value={event.value}{data}"
    if isinstance(event, Gap):
        return (f"gap reason={event.reason} after={event.after} resume_from={event.resume_from} "
                f"missed={event.missed}" + (" (found by the client)" if event.detected == "client" else ""))
    final = " final" if event.final else ""
    return (f"candle {event.interval} {iso(event.t)} open={event.open} high={event.high} low={event.low} "
            f"close={event.close} count={event.count} volume={event.volume}{final}")


def save_cursor(path: Path, cursor: Cursor) -> None:
    """Writes the cursor file whole or not at all (a rename), so a kill leaves a valid one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(cursor.to_json())
    os.replace(tmp, path)


def load_cursor(path: Path) -> Cursor | None:
    try:
        return Cursor.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as e:
        raise SystemExit(f"tickstream: {path} holds no cursor ({e})") from e


def client_of(args: argparse.Namespace, **options: Any) -> Client:
    return Client(args.url, token=args.token or None, **options)


async def tail(args: argparse.Namespace, out: TextIO) -> int:
    cursor_file = Path(args.cursor_file) if args.cursor_file else None
    start = load_cursor(cursor_file) if cursor_file else None

    def on_state(state: ClientState, info: StateInfo) -> None:
        if state == "reconnecting":
            why = f"closed {info.code}" if info.code is not None else (info.error.message if info.error else "dropped")
            print(f"# reconnecting ({why}), next attempt in {info.delay:.1f} s", file=sys.stderr, flush=True)
        elif state == "connected":
            print(f"# connected to {info.url}", file=sys.stderr, flush=True)

    ticks = 0
    async with client_of(args, on_state=on_state, transport="sse" if args.sse else "websocket") as client:
        sub = client.subscribe(args.channel, since=args.since, seq=args.seq, epoch=args.epoch,
                               rate=args.rate, candles=args.candles, cursor=start)
        async with sub:
            async for event in sub:
                print(json.dumps(as_json(event), separators=(",", ":")) if args.json else as_text(event),
                      file=out, flush=True)
                if isinstance(event, Tick):
                    ticks += 1
                    if cursor_file is not None and sub.cursor is not None:
                        save_cursor(cursor_file, sub.cursor)
                    if args.count is not None and ticks >= args.count:
                        break
    return 0


async def rows(args: argparse.Namespace, out: TextIO) -> int:
    """``history`` and ``candles``: JSON lines, or CSV with a header row."""
    async with client_of(args) as client:
        pages: Pages[Tick] | Pages[Candle]
        if args.command == "candles":
            pages = client.candles(args.channel, interval=args.interval, since=args.since, until=args.until,
                                   order=args.order, limit=args.limit)
            columns = CANDLE_CSV
        else:
            pages = client.history(args.channel, since=args.since, until=args.until, order=args.order,
                                   limit=args.limit)
            columns = TICK_CSV
        writer = csv.writer(out, lineterminator="\n") if args.csv else None
        if writer:
            writer.writerow(columns)
        async for item in pages:
            row = as_json(item)
            if writer is None:
                print(json.dumps(row, separators=(",", ":")), file=out)
                continue
            if "data" in row:
                row["data"] = None if row["data"] is None else json.dumps(row["data"], separators=(",", ":"))
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return 0


async def latest(args: argparse.Namespace, out: TextIO) -> int:
    async with client_of(args) as client:
        tick = await client.latest(args.channel)
    print(json.dumps(as_json(tick) if tick else None, separators=(",", ":")), file=out)
    return 0 if tick else 1


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"a whole number ≥ 1, not {text}")
    return n


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("TICKSTREAM_URL", "http://127.0.0.1:8080"),
                        help="the server (default $TICKSTREAM_URL, else http://127.0.0.1:8080)")
    common.add_argument("--token", default=os.environ.get("TICKSTREAM_TOKEN"),
                        help="a reader token (default $TICKSTREAM_TOKEN)")
    p = argparse.ArgumentParser(prog="python -m tickstream", description="A quick look at a tickstream channel.")
    commands = p.add_subparsers(dest="command", required=True)

    t = commands.add_parser("tail", parents=[common], help="live ticks as they come, resumed across drops")
    t.add_argument("channel")
    t.add_argument("--since", help='an id, "$" (live only), "0-0" (everything kept) or "t:<RFC 3339>"')
    t.add_argument("--seq", type=int, help="the seq of the tick at --since (exact gaps)")
    t.add_argument("--epoch", help="the epoch of the tick at --since")
    t.add_argument("--rate", type=int, help="at most this many ticks a second, each the newest")
    t.add_argument("--candles", choices=INTERVALS, help="also live candles of this interval")
    t.add_argument("--cursor-file", help="resume from the cursor in this file, and keep it there after each tick")
    t.add_argument("--count", type=positive, help="stop after this many ticks")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--sse", action="store_true", help="over Server-Sent Events instead of a WebSocket")
    t.set_defaults(run=tail)

    for name, what in (("history", "stored ticks"), ("candles", "OHLCV candles")):
        h = commands.add_parser(name, parents=[common], help=f"{what}, pages followed")
        h.add_argument("channel")
        if name == "candles":
            h.add_argument("--interval", default="1m", choices=INTERVALS)
        h.add_argument("--since", help="exclusive lower bound: an id or t:<RFC 3339> (candles: RFC 3339 or Unix ms)")
        h.add_argument("--until", help="inclusive upper bound, the same forms")
        h.add_argument("--order", choices=["asc", "desc"], default="asc")
        h.add_argument("--limit", type=positive, help="at most this many rows")
        h.add_argument("--csv", action="store_true", help="CSV with a header row instead of JSON lines")
        h.set_defaults(run=rows)

    la = commands.add_parser("latest", parents=[common], help="the newest tick (exit 1 when there is none)")
    la.add_argument("channel")
    la.set_defaults(run=latest)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.run(args, sys.stdout))
        return code
    except TickstreamError as e:
        print(f"tickstream: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except ValueError as e:  # a bad --url, --since or --seq, said without a traceback
        print(f"tickstream: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`: the reader has all it wanted
        sys.stderr.close()
        return 0
