"""What a subscription yields (``Tick``, ``Gap``, ``Candle``) and where it stands
(``Cursor``), parsed from the server's JSON frames (docs/PROTOCOL.md §2.5, §5.3, §6.1).

Times are timezone-aware ``datetime`` objects in UTC; everything else is as the server
sent it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, Mapping, TypeAlias

__all__ = ["Candle", "Cursor", "Event", "Gap", "Tick", "compare_ids"]

CHANNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
ID_RE = re.compile(r"\d+-\d+")
SPECIAL_SINCE_RE = re.compile(r"\$|t:.+")


def is_id(value: object) -> bool:
    """A Redis stream id, ``ms-n``."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def compare_ids(a: str, b: str) -> int:
    """-1, 0 or 1 as stream id ``a`` is before, equal to or after ``b``."""
    am, _, an = a.partition("-")
    bm, _, bn = b.partition("-")
    left, right = (int(am), int(an)), (int(bm), int(bn))
    return (left > right) - (left < right)


def _time(value: Any) -> datetime | None:
    # RFC 3339 with "Z", as the server writes them; Python ≥ 3.11 reads that directly.
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a subscription stands: the last tick handed over (``id``, with its ``seq``
    and ``epoch`` for exact gaps). Serialisable, so a service can keep it and resume
    after its own restart: ``Cursor.from_json(cursor.to_json())``."""

    id: str
    seq: int | None = None
    epoch: str | None = None

    def __post_init__(self) -> None:
        if not is_id(self.id):
            raise ValueError(f"not a stream id: {self.id!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Cursor:
        epoch = value.get("epoch")
        return cls(str(value["id"]), _int(value.get("seq")), epoch if isinstance(epoch, str) else None)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Cursor:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("a cursor is a JSON object")
        return cls.from_dict(value)


@dataclass(frozen=True, slots=True)
class Tick:
    """One stored tick (docs/PROTOCOL.md §2.5). ``skipped``: under a ``rate``, how many
    ticks were left out before this one (0 otherwise; ``None`` when uncountable)."""

    type: ClassVar[Literal["tick"]] = "tick"
    channel: str
    id: str
    seq: int | None
    epoch: str | None
    ts: datetime | None
    ingest_ts: datetime | None
    value: float | int | None
    data: Any
    event_id: str | None
    skipped: int | None = 0

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.id, self.seq, self.epoch)

    @classmethod
    def parse(cls, f: Mapping[str, Any], channel: str | None = None) -> Tick:
        value = f.get("value")
        return cls(
            channel=str(f.get("channel") or channel or ""),
            id=str(f["id"]),
            seq=_int(f.get("seq")),
            epoch=f.get("epoch") if isinstance(f.get("epoch"), str) else None,
            ts=_time(f.get("ts")),
            ingest_ts=_time(f.get("ingest_ts")),
            value=value if isinstance(value, (int, float)) and not isinstance(value, bool) else None,
            data=f.get("data"),
            event_id=f.get("event_id") if isinstance(f.get("event_id"), str) else None,
            skipped=_int(f["skipped"]) if "skipped" in f else 0,
        )


GapReason: TypeAlias = Literal["trimmed", "epoch", "rollback", "seq"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Ticks that will never arrive (docs/PROTOCOL.md §5.4): after ``after``, the next
    is ``resume_from``; ``missed`` is exact when known. ``detected`` is ``"server"``
    for a gap the server announced, ``"client"`` for a break this library found itself
    (``reason`` ``"seq"`` or ``"epoch"``)."""

    type: ClassVar[Literal["gap"]] = "gap"
    channel: str
    reason: str
    after: str | None
    resume_from: str | None
    missed: int | None
    detected: Literal["server", "client"] = "server"

    @classmethod
    def parse(cls, f: Mapping[str, Any], channel: str) -> Gap:
        return cls(
            channel=channel,
            reason=str(f.get("reason") or ""),
            after=f.get("after") if isinstance(f.get("after"), str) else None,
            resume_from=f.get("resume_from") if isinstance(f.get("resume_from"), str) else None,
            missed=_int(f.get("missed")),
        )


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bucket (docs/PROTOCOL.md §6.1) starting at ``t``. ``final`` is ``True``
    on the last frame of a closed bucket, ``False`` on a live one, ``None`` from REST."""

    type: ClassVar[Literal["candle"]] = "candle"
    channel: str
    interval: str
    t: datetime | None
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    count: int
    volume: float | None
    final: bool | None = None

    @classmethod
    def parse(cls, f: Mapping[str, Any], channel: str, interval: str | None = None) -> Candle:
        def num(key: str) -> float | None:
            v = f.get(key)
            return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        final = f.get("final")
        return cls(
            channel=channel,
            interval=str(f.get("interval") or interval or ""),
            t=_time(f.get("t")),
            open=num("open"),
            high=num("high"),
            low=num("low"),
            close=num("close"),
            count=_int(f.get("count")) or 0,
            volume=num("volume"),
            final=final if isinstance(final, bool) else None,
        )


Event: TypeAlias = Tick | Gap | Candle
