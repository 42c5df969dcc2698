"""What a subscription yields (``Tick``, ``Gap``, ``Candle``) and where it stands
(``Cursor``), parsed from the server's JSON frames (docs/PROTOCOL.md §2.5, §5.3, §6.1).

Times are timezone-aware ``datetime`` objects in UTC; everything else is as the server
sent it.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, Mapping, TypeAlias, TypeGuard, cast

__all__ = ["Candle", "Cursor", "Event", "Gap", "GapReason", "Interval", "Tick", "compare_ids"]

Interval: TypeAlias = Literal["1s", "1m", "5m", "1h", "1d"]
INTERVALS: tuple[Interval, ...] = ("1s", "1m", "5m", "1h", "1d")
# The server refuses a longer epoch (docs/PROTOCOL.md §5.1).
EPOCH_MAX = 64

CHANNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
ID_RE = re.compile(r"\d+-\d+")
SPECIAL_SINCE_RE = re.compile(r"\$|t:.+")


def is_id(value: object) -> TypeGuard[str]:
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


def _num(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def checked_seq(seq: Any) -> int | None:
    """A ``seq`` as the server takes it: a whole number ≥ 0 (numpy's too), or None."""
    if seq is None:
        return None
    if isinstance(seq, bool):
        raise ValueError(f"seq must be a whole number, not {seq!r}")
    try:
        n = operator.index(seq)
    except TypeError:
        raise ValueError(f"seq must be a whole number, not {seq!r}") from None
    if n < 0:
        raise ValueError(f"seq must be ≥ 0, not {n}")
    return n


def checked_epoch(epoch: Any) -> str | None:
    """An ``epoch`` as the server takes it: a string of at most 64 characters, or None."""
    if epoch is None:
        return None
    if not isinstance(epoch, str) or not 0 < len(epoch) <= EPOCH_MAX:
        raise ValueError(f"epoch must be a string of 1 to {EPOCH_MAX} characters, not {epoch!r}")
    return epoch


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
        # Normalised where it is built, so what is sent is always what the server takes.
        object.__setattr__(self, "seq", checked_seq(self.seq))
        object.__setattr__(self, "epoch", checked_epoch(self.epoch))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Cursor:
        return cls(str(value["id"]), value.get("seq"), value.get("epoch"))

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
    data: Any = field(hash=False)  # a dict is not hashable; a tick's id identifies it
    event_id: str | None
    skipped: int | None = 0

    @property
    def cursor(self) -> Cursor:
        return Tick.cursor_of(self.id, self.seq, self.epoch)

    @staticmethod
    def cursor_of(id: str, seq: int | None, epoch: str | None) -> Cursor:
        """A cursor of the server's own id, seq and epoch, taken as they are: a seq or
        epoch a client could not send back (the server broke its contract) is left out
        rather than stopping the subscription."""
        try:
            return Cursor(id, seq, epoch)
        except ValueError:
            return Cursor(id)

    @classmethod
    def parse(cls, f: Mapping[str, Any], channel: str | None = None) -> Tick:
        return cls(
            channel=str(f.get("channel") or channel or ""),
            id=str(f["id"]),
            seq=_int(f.get("seq")),
            epoch=_str(f.get("epoch")),
            ts=_time(f.get("ts")),
            ingest_ts=_time(f.get("ingest_ts")),
            value=_num(f.get("value")),
            data=f.get("data"),
            event_id=_str(f.get("event_id")),
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
    reason: GapReason
    after: str | None
    resume_from: str | None
    missed: int | None
    detected: Literal["server", "client"] = "server"

    @classmethod
    def parse(cls, f: Mapping[str, Any], channel: str) -> Gap:
        return cls(
            channel=channel,
            # A reason newer than this library is passed on as the server said it.
            reason=cast(GapReason, str(f.get("reason") or "")),
            after=_str(f.get("after")),
            resume_from=_str(f.get("resume_from")),
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
        final = f.get("final")
        return cls(
            channel=channel,
            interval=str(f.get("interval") or interval or ""),
            t=_time(f.get("t")),
            open=_num(f.get("open")),
            high=_num(f.get("high")),
            low=_num(f.get("low")),
            close=_num(f.get("close")),
            count=_int(f.get("count")) or 0,
            volume=_num(f.get("volume")),
            final=final if isinstance(final, bool) else None,
        )


Event: TypeAlias = Tick | Gap | Candle
