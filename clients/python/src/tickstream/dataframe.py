"""Ticks and candles as pandas DataFrames, indexed by time (a UTC ``DatetimeIndex``).

pandas is an optional extra (``pip install './clients/python[pandas]'``): it is
imported here, when a DataFrame is asked for, never by ``import tickstream``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .events import Candle, Tick

if TYPE_CHECKING:
    import pandas

__all__ = ["candles_to_dataframe", "ticks_to_dataframe", "to_dataframe"]

TICK_COLUMNS = ["channel", "id", "seq", "epoch", "ingest_ts", "value", "data", "event_id"]
CANDLE_COLUMNS = ["channel", "interval", "open", "high", "low", "close", "count", "volume"]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as e:
        raise ImportError("DataFrames need pandas: install it, or tickstream with its [pandas] extra") from e
    return pandas


def ticks_to_dataframe(ticks: Iterable[Tick]) -> pandas.DataFrame:
    """One row per tick, indexed by its ``ts`` (named ``ts``, UTC), in the order given;
    ``value`` a float column (NaN where a tick had none), ``ingest_ts`` UTC too."""
    pd = _pandas()
    ticks = list(ticks)
    frame = pd.DataFrame(
        {
            "channel": pd.Series([t.channel for t in ticks], dtype="string"),
            "id": pd.Series([t.id for t in ticks], dtype="string"),
            "seq": pd.Series([t.seq for t in ticks], dtype="Int64"),
            "epoch": pd.Series([t.epoch for t in ticks], dtype="string"),
            "ingest_ts": pd.to_datetime(pd.Series([t.ingest_ts for t in ticks], dtype=object), utc=True),
            "value": pd.Series([t.value for t in ticks], dtype="float64"),
            "data": pd.Series([t.data for t in ticks], dtype=object),
            "event_id": pd.Series([t.event_id for t in ticks], dtype="string"),
        },
        columns=TICK_COLUMNS,
    )
    frame.index = pd.DatetimeIndex(pd.to_datetime(pd.Series([t.ts for t in ticks], dtype=object), utc=True), name="ts")
    return frame


def candles_to_dataframe(candles: Iterable[Candle]) -> pandas.DataFrame:
    """One row per candle, indexed by its start ``t`` (named ``t``, UTC): ``open``,
    ``high``, ``low``, ``close``, ``volume`` floats (NaN for no volume), ``count``."""
    pd = _pandas()
    candles = list(candles)
    frame = pd.DataFrame(
        {
            "channel": pd.Series([k.channel for k in candles], dtype="string"),
            "interval": pd.Series([k.interval for k in candles], dtype="string"),
            **{
                field: pd.Series([getattr(k, field) for k in candles], dtype="float64")
                for field in ("open", "high", "low", "close")
            },
            "count": pd.Series([k.count for k in candles], dtype="int64"),
            "volume": pd.Series([k.volume for k in candles], dtype="float64"),
        },
        columns=CANDLE_COLUMNS,
    )
    frame.index = pd.DatetimeIndex(pd.to_datetime(pd.Series([k.t for k in candles], dtype=object), utc=True), name="t")
    return frame


def to_dataframe(items: Iterable[Tick | Candle]) -> pandas.DataFrame:
    """Ticks or candles (not both) as a DataFrame; an empty list gives the ticks' columns."""
    items = list(items)
    if items and all(isinstance(i, Candle) for i in items):
        return candles_to_dataframe(items)  # type: ignore[arg-type]
    if all(isinstance(i, Tick) for i in items):
        return ticks_to_dataframe(items)  # type: ignore[arg-type]
    raise TypeError("to_dataframe takes ticks or candles, not both (gaps have no row)")
