"""DataFrames of history and candles, as a notebook would take them: a UTC
DatetimeIndex, numbers as floats, equal to what the REST pages hold; pandas imported
only when one is asked for."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from tickstream import to_dataframe

from .support import Server, first

pd = pytest.importorskip("pandas")


T0 = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)


async def ingest_minutes(server: Server, channel: str) -> None:
    """Three minutes of one tick every 10 s, the last without a value or volume."""
    ticks = [{"ts": (T0 + timedelta(seconds=10 * i)).isoformat().replace("+00:00", "Z"), "value": float(i),
              "data": {"volume": 2}} for i in range(17)]
    ticks.append({"ts": (T0 + timedelta(seconds=170)).isoformat().replace("+00:00", "Z"), "data": {"note": "x"}})
    await server.ingest(channel, ticks)


async def test_history_as_a_dataframe(make_client, redis, server) -> None:
    channel = "frame.ticks"
    await ingest_minutes(server, channel)
    c = make_client(server.url)
    ticks = await c.history(channel).to_list()
    df = await c.history(channel).to_dataframe()
    assert isinstance(df.index, pd.DatetimeIndex) and str(df.index.tz) == "UTC" and df.index.name == "ts"
    assert list(df.index) == [t.ts for t in ticks]
    assert df.index[0] == pd.Timestamp("2026-12-06T09:00:00Z")
    assert list(df["id"]) == [e["id"] for e in await redis.stream(channel)]
    assert list(df["seq"]) == list(range(1, 19))
    assert df["value"].dtype == "float64" and df["value"].iloc[3] == 3.0 and pd.isna(df["value"].iloc[-1])
    assert df["data"].iloc[-1] == {"note": "x"}
    assert str(df["ingest_ts"].dt.tz) == "UTC"
    assert df.loc["2026-12-06 09:01", "value"].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0], "sliced by minute"
    assert to_dataframe(ticks).equals(df)


async def test_candles_as_a_dataframe(make_client, server) -> None:
    channel = "frame.candles"
    await ingest_minutes(server, channel)
    c = make_client(server.url)
    df = await c.candles(channel, interval="1m").to_dataframe()
    assert isinstance(df.index, pd.DatetimeIndex) and str(df.index.tz) == "UTC" and df.index.name == "t"
    assert list(df.index) == [pd.Timestamp(T0 + timedelta(minutes=m)) for m in range(3)]
    assert df[["open", "high", "low", "close"]].values.tolist() == [[0, 5, 0, 5], [6, 11, 6, 11], [12, 16, 12, 16]]
    assert df["count"].tolist() == [6, 6, 5], "the tick without a value folds into no candle"
    assert df["volume"].tolist() == [12.0, 12.0, 10.0]
    assert (df["interval"] == "1m").all()


async def test_an_empty_history_is_an_empty_frame_with_the_columns(make_client, server) -> None:
    c = make_client(server.url)
    df = await c.history("frame.nothing").to_dataframe()
    assert len(df) == 0 and "value" in df.columns and isinstance(df.index, pd.DatetimeIndex)


def test_import_tickstream_does_not_import_pandas() -> None:
    code = "import sys, tickstream; assert 'pandas' not in sys.modules, 'pandas was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_dataframe_row_is_a_cursor_to_resume_from(make_client, server) -> None:
    channel = "frame.resume"
    await ingest_minutes(server, channel)
    c = make_client(server.url)
    df = await c.history(channel, limit=10).to_dataframe()
    last = df.iloc[-1]  # its seq is numpy's int64
    more = await server.ingest(channel, [{"value": 100.0}, {"value": 101.0}])
    async with c.subscribe(channel, since=last["id"], seq=last["seq"], epoch=last["epoch"]) as sub:
        got = await first(sub, 10)
    assert [e.type for e in got] == ["tick"] * 10, "no gap: the row's seq was right"
    assert got[0].seq == 11 and got[-1].id == more[-1]

