"""The pure parts, without a server: ids, token timing, backoff, close codes, cursors,
and a subscription's continuity check fed frames directly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tickstream import Backoff, Cursor, Gap, Subscription, Tick, TickstreamError
from tickstream.events import compare_ids
from tickstream.link import Plan, after_close, after_refusal
from tickstream.tokens import refresh_delay

from .support import jwt


def test_ids_compare_as_numbers() -> None:
    assert compare_ids("10-0", "9-5") == 1
    assert compare_ids("5-10", "5-9") == 1
    assert compare_ids("5-1", "5-1") == 0
    assert compare_ids("1796592839168-0", "1796592839168-42") == -1


def test_a_token_is_refreshed_a_fifth_of_its_lifetime_before_exp() -> None:
    now = 1_000_000.0
    hour = jwt(iat=int(now), exp=int(now) + 3600)
    assert refresh_delay(hour, now) == 3600 - 60, "a fifth, at most 60 s"
    short = jwt(iat=int(now), exp=int(now) + 100)
    assert refresh_delay(short, now) == 80
    assert refresh_delay(jwt(iat=int(now) - 60, exp=int(now) - 27), now) == 1, "never sooner than in 1 s"
    assert refresh_delay("not-a-jwt", now) is None


def test_backoff_has_full_jitter_under_its_cap() -> None:
    b = Backoff(base=0.5, cap=30)
    first = [b.delay(0) for _ in range(200)]
    assert 0 <= min(first) and max(first) <= 0.5 and max(first) > 0.4, "uniform in [0, 0.5]"
    late = [b.delay(20, minimum=5) for _ in range(200)]
    assert 5 <= min(late) and max(late) <= 35 and min(late) < 10, "uniform in [5, 5 + 30]"


def test_close_codes_mean_what_the_protocol_says() -> None:
    assert after_close(1012, True).soon
    assert after_close(1008, True).stop is not None and after_close(1008, True).stop.code == "policy"
    assert after_close(4003, True).stop is not None
    assert after_close(4029, True).minimum == 5 and after_close(4029, True).extra == 2
    assert after_close(1013, True).minimum == 5
    assert after_close(4001, True).token and after_close(4001, True).stop is None
    stop = after_close(4001, False).stop
    assert stop is not None and stop.code == "token_expired"
    assert after_close(1006, True) == after_close(1011, True) == after_close(1000, True) == Plan(), "plain backoff"
    assert after_refusal(TickstreamError("x", status=429, retry_after=7), True).minimum == 7
    assert after_refusal(TickstreamError("x", status=403), True).stop is not None
    assert after_refusal(TickstreamError("x", status=401), True).token
    assert after_refusal(TickstreamError("x", status=401), False).stop is not None


def test_a_cursor_survives_json() -> None:
    c = Cursor("1796592839168-42", 1750, "7ccmyxsq4jss")
    assert Cursor.from_json(c.to_json()) == c
    assert json.loads(c.to_json()) == {"id": "1796592839168-42", "seq": 1750, "epoch": "7ccmyxsq4jss"}
    assert Cursor.from_dict({"id": "1-0"}) == Cursor("1-0", None, None)
    with pytest.raises(ValueError):
        Cursor("latest")


class Int64:
    """A number that is not an int but says it is one (numpy's int64, a DataFrame's seq)."""

    def __index__(self) -> int:
        return 12


def test_a_cursor_takes_only_what_the_server_takes() -> None:
    c = Cursor("1-0", Int64(), "e1")  # type: ignore[arg-type]
    assert c.seq == 12 and type(c.seq) is int and c.to_json() == '{"id":"1-0","seq":12,"epoch":"e1"}'
    for seq in ("5", 5.5, -1, True):
        with pytest.raises(ValueError):
            Cursor("1-0", seq)  # type: ignore[arg-type]
    for epoch in (5, "", "x" * 65):
        with pytest.raises(ValueError):
            Cursor("1-0", 1, epoch)  # type: ignore[arg-type]


def test_a_tick_is_hashable_and_its_policy_close_says_why() -> None:
    t = Tick.parse({"id": "1-0", "seq": 1, "epoch": "e", "data": {"a": 1}}, "c")
    assert {t: 1}[t] == 1
    stop = after_close(1008, True, "expected a JSON object").stop
    assert stop is not None and "expected a JSON object" in stop.message


class NoClient:
    """What a Subscription asks of its client when it is closed."""

    def _unsubscribed(self, sub: Subscription) -> None:
        pass


def subscription(start: Cursor | None = None) -> Subscription:
    sub = Subscription(NoClient(), "c", {}, start, 1000)  # type: ignore[arg-type]
    sub.frame({"type": "subscribed", "channel": "c", "epoch": "e1"})
    return sub


def tick(n: int, epoch: str = "e1", **extra: Any) -> dict[str, Any]:
    return {"type": "tick", "channel": "c", "id": f"{100 + n}-0", "seq": n, "epoch": epoch, **extra}


async def drain(sub: Subscription) -> list[Any]:
    """What the subscription holds for its loop, read as the loop would."""
    out = []
    while sub._buffer:
        out.append(await anext(sub))
    return out


async def test_repeats_are_dropped_and_a_silent_break_becomes_a_client_gap() -> None:
    sub = subscription()
    for f in (tick(1), tick(2), tick(2), tick(1), tick(4), tick(5, epoch="e2")):
        sub.frame(f)
    events = await drain(sub)
    assert [e.type for e in events] == ["tick", "tick", "gap", "tick", "gap", "tick"]
    assert events[2] == Gap("c", "seq", "102-0", "104-0", 1, "client")
    assert events[4] == Gap("c", "epoch", "104-0", "105-0", None, "client")
    assert sub.cursor == Cursor("105-0", 5, "e2")


async def test_frames_before_subscribed_belong_to_an_earlier_subscription() -> None:
    sub = subscription(Cursor("101-0", 1, "e1"))
    sub.subscribing()
    sub.frame(tick(9))
    sub.frame({"type": "subscribed", "channel": "c", "epoch": "e1"})
    sub.frame(tick(2))
    assert [e.seq for e in await drain(sub)] == [2]


async def test_the_skipped_chain_is_checked() -> None:
    sub = subscription()
    sub.frame(tick(1, skipped=None))  # the first after a subscribe may not know
    sub.frame(tick(5, skipped=3))
    sub.frame(tick(9, skipped=2))  # 5 + 2 + 1 = 8, not 9
    sub.frame(tick(10, skipped=None))  # uncountable where it may not be
    events = await drain(sub)
    assert [(e.type, getattr(e, "missed", None)) for e in events] == [
        ("tick", None), ("tick", None), ("gap", 1), ("tick", None), ("gap", None), ("tick", None)]


async def test_a_gap_said_again_after_a_resume_is_handed_over_once_and_only_what_it_adds() -> None:
    sub = subscription(Cursor("101-0", 1, "e1"))
    gap = {"type": "gap", "channel": "c", "reason": "trimmed", "after": "101-0", "resume_from": "150-0", "missed": 48}
    sub.frame(gap)
    sub.subscribing()  # a drop before the gap's tick came
    sub.frame({"type": "subscribed", "channel": "c", "epoch": "e1"})
    sub.frame(gap)
    sub.subscribing()
    sub.frame({"type": "subscribed", "channel": "c", "epoch": "e1"})
    sub.frame({**gap, "resume_from": "160-0", "missed": 58})  # trimming went on
    sub.frame(tick(60))
    events = await drain(sub)
    assert events[:2] == [Gap("c", "trimmed", "101-0", "150-0", 48), Gap("c", "trimmed", "150-0", "160-0", 10)]
    assert [e.type for e in events] == ["gap", "gap", "tick"]


def test_live_on_an_empty_start_becomes_the_cursor() -> None:
    sub = subscription()
    sub.frame({"type": "live", "channel": "c", "last_id": "123-4"})
    assert sub.state == "live" and sub.cursor == Cursor("123-4", None, "e1")
    assert sub.subscribe_params() == {"since": "123-4", "epoch": "e1"}


async def test_wait_live_raises_once_a_live_subscription_ended() -> None:
    sub = subscription()
    sub.frame({"type": "live", "channel": "c", "last_id": "1-0"})
    sub._end(TickstreamError("forbidden", channel="c"))
    with pytest.raises(TickstreamError):
        await sub.wait_live()
    assert [e async for e in sub] == [], "told by wait_live: the loop does not raise it again"


async def test_an_error_comes_after_what_was_received_before_it_and_once() -> None:
    sub = subscription()
    sub.frame(tick(1))
    sub._end(TickstreamError("forbidden", channel="c"))
    got = []
    with pytest.raises(TickstreamError) as raised:
        async for e in sub:
            got.append(e)
    assert [t.seq for t in got] == [1] and raised.value.code == "forbidden"
    assert [e async for e in sub] == [], "told once"
