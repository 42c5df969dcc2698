"""What a user of the library sees of the contract: exact trimmed gaps, conflation's
skipped chain, live candles, refusals reported once (never retried forever), the
inbound throttle respected, and REST reads equal to what Redis holds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tickstream import Cursor, Gap, Tick, TickstreamError

from .conftest import collect
from .support import Producer, assert_exactly_once, jwt, until

GENEROUS = "100000/s:100000"
# Small stream nodes, so MAXLEN ~ trims close to the cap and a gap is certain.
REDIS_ARGS = ["--stream-node-max-entries", "10"]
SERVER_ENV = {"TICKSTREAM_STREAM_MAXLEN": "100", "TICKSTREAM_RATE_FREE_WS": GENEROUS,
              "TICKSTREAM_RATE_FREE_API": GENEROUS}
STRICT_ENV = {"TICKSTREAM_RATE_FREE_WS": "2/s:3", "TICKSTREAM_RATE_FREE_API": "4/s:4"}


async def test_a_trimmed_stream_gap_says_exactly_how_many_were_missed(make_client, redis, server) -> None:
    channel = "contract.trimmed"
    first = await server.ingest(channel, [{"value": i} for i in range(10)])
    epoch = (await redis.stream(channel))[0]["epoch"]
    for i in range(5):
        await server.ingest(channel, [{"value": 1000 + 100 * i + k} for k in range(100)])
    kept = await redis.stream(channel)
    assert kept[0]["seq"] > 6, f"the stream was trimmed past the cursor (oldest kept seq {kept[0]['seq']})"

    events: list[Any] = []
    async with make_client(server.url) as c, c.subscribe(channel, cursor=Cursor(first[4], 5, epoch)) as sub:
        async for e in sub:
            events.append(e)
            if isinstance(e, Tick) and e.id == kept[-1]["id"]:
                break
    assert events[0] == Gap(channel, "trimmed", first[4], kept[0]["id"], kept[0]["seq"] - 5 - 1)
    assert_exactly_once(events[1:], kept)


async def test_conflation_at_most_rate_frames_a_second_with_the_skipped_chain(make_client, server) -> None:
    channel = "contract.conflated"
    c = make_client(server.url)
    sub = c.subscribe(channel, since="$", rate=5)
    got = collect(sub)
    await sub.wait_live()
    producer = Producer(lambda: server, channel, every=0.01)
    await until("ten frames", lambda: len(got.ticks) >= 10)
    ids = await producer.stop()
    await until("the newest tick", lambda: got.ticks[-1].id == ids[-1])
    assert got.gaps == [], "the skipped chain holds: no break found"
    span = (got.ticks[-1].ingest_ts - got.ticks[0].ingest_ts).total_seconds()
    assert len(got.ticks) <= 5 * span + 3, f"{len(got.ticks)} frames in {span} s"
    for a, b in zip(got.ticks, got.ticks[1:]):
        assert b.seq == a.seq + b.skipped + 1, "seq = previous + skipped + 1"
    assert sum(t.skipped for t in got.ticks) > len(got.ticks), "most ticks were skipped"


async def test_live_candles_arrive_as_candle_events(make_client, server) -> None:
    channel = "contract.candles"
    c = make_client(server.url)
    sub = c.subscribe(channel, since="$", candles="1s")
    got = collect(sub)
    await sub.wait_live()
    await server.ingest(channel, [{"value": 3}, {"value": 7}, {"value": 5}])
    k = await until("a candle with all three", lambda: next((x for x in got.candles if x.count == 3), None))
    assert (k.type, k.interval, k.open, k.high, k.low, k.close) == ("candle", "1s", 3, 7, 3, 5)


async def test_a_forbidden_channel_ends_its_iteration_once_and_is_never_retried(make_client, server, sent) -> None:
    c = make_client(server.url, token=jwt(channels=["open.*"]))
    ok = collect(c.subscribe("open.a", since="$"))
    denied = c.subscribe("secret.a")
    with pytest.raises(TickstreamError) as raised:
        async for _ in denied:
            pass
    assert (raised.value.code, raised.value.channel) == ("forbidden", "secret.a")
    async for _ in denied:  # told once: a second loop just ends
        pass
    await server.ingest("open.a", [{"value": 1}])
    await until("the allowed channel still ticks", lambda: len(ok.ticks) == 1)
    asked = [m for m in sent if m["type"] == "subscribe" and m["channel"] == "secret.a"]
    assert len(asked) == 1, "asked once"
    assert c.state == "connected"


async def test_a_refused_handshake_is_reported_with_its_status_and_code_and_stops(make_client, server) -> None:
    c = make_client(server.url, token="not-a-jwt")
    sub = c.subscribe("open.b")
    with pytest.raises(TickstreamError) as raised:
        async for _ in sub:
            pass
    assert (raised.value.status, raised.value.code) == (401, "invalid_token")
    assert c.state == "closed"
    assert len(c.states("closed")) == 1
    assert c.states("closed")[0].error is raised.value


async def test_an_expired_fixed_token_ends_with_token_expired(make_client, server) -> None:
    now = int(datetime.now(timezone.utc).timestamp())
    # Past exp but inside the server's 30 s leeway: accepted, then closed with 4001.
    c = make_client(server.url, token=jwt(iat=now - 60, exp=now - 28))
    sub = c.subscribe("open.c", since="$")
    error = await sub.wait_closed()
    assert error is not None and error.code == "token_expired"
    assert c.states("reconnecting") == [], "a fixed token cannot get fresher: no reconnect"
    assert c.state == "closed"


async def test_subscribes_are_paced_under_the_inbound_throttle(make_client, server, sent) -> None:
    c = make_client(server.url)
    subs = [c.subscribe(f"contract.many.{i}", since="$") for i in range(30)]
    await until("all 30 live", lambda: all(s.state == "live" for s in subs))
    assert await server.terminate() == 0
    await server.start_again()
    await until("all 30 live again", lambda: c.state == "connected" and all(s.state == "live" for s in subs), 30)
    assert [info.code for info in c.states("reconnecting")] == [1012], "one close: the restart, never a 4029"
    assert len([m for m in sent if m["type"] == "subscribe"]) == 60


async def test_a_rate_limited_subscribe_is_retried_until_accepted(make_client, strict, sent) -> None:
    c = make_client(strict.url)
    subs = [c.subscribe(f"contract.limited.{i}", since="$") for i in range(6)]
    await until("all six live", lambda: all(s.state == "live" for s in subs), 30)
    assert len([m for m in sent if m["type"] == "subscribe"]) > 6, "some were refused and asked again"


async def test_rest_under_a_small_bucket_is_paced_and_no_request_fails(make_client, strict) -> None:
    channel = "contract.paced"
    await strict.ingest(channel, [{"value": 1}])
    c = make_client(strict.url)
    refused = await strict.metric('tickstream_rate_limited_total{group="api"}')
    for _ in range(12):
        tick = await c.latest(channel)
        assert tick is not None and tick.value == 1
    assert await strict.metric('tickstream_rate_limited_total{group="api"}') == refused, "never refused"


async def test_history_latest_and_candles_equal_what_redis_holds(make_client, redis, server, strict) -> None:
    channel = "contract.history"
    # 2,400 ticks over 40 minutes of producer time, with volumes: pages of history and
    # of candles are followed, and candles are checked against the ticks themselves.
    t0 = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)
    ticks = [{"ts": (t0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
              "value": 100 + (i * 7919) % 101, "data": {"volume": i % 5}} for i in range(2400)]
    for i in range(0, len(ticks), 1000):  # through the node without a MAXLEN of 100
        await strict.ingest(channel, ticks[i:i + 1000])
    stream = await redis.stream(channel)
    assert len(stream) == 2400
    c = make_client(server.url)
    history = await c.history(channel).to_list()
    assert [(t.id, t.seq) for t in history] == [(e["id"], e["seq"]) for e in stream], "every tick, pages followed"
    newest = [t.id async for t in c.history(channel, order="desc", limit=1500)]
    assert newest == [e["id"] for e in reversed(stream[-1500:])]
    between = [t.id async for t in c.history(channel, since=stream[2000]["id"], until=stream[2100]["id"])]
    assert between == [e["id"] for e in stream[2001:2101]]
    latest = await c.latest(channel)
    assert latest is not None and latest.id == stream[-1]["id"]
    assert await c.latest("contract.nothing") is None

    want: dict[datetime, dict[str, Any]] = {}
    for t in ticks:
        at = datetime.fromisoformat(t["ts"]).replace(second=0)
        v, vol = t["value"], t["data"]["volume"]
        k = want.get(at)
        if k is None:
            want[at] = {"t": at, "open": v, "high": v, "low": v, "close": v, "count": 1, "volume": vol}
        else:
            k.update(high=max(k["high"], v), low=min(k["low"], v), close=v, count=k["count"] + 1,
                     volume=k["volume"] + vol)
    since = (t0 - timedelta(milliseconds=1)).isoformat().replace("+00:00", "Z")
    candles = [k async for k in c.candles(channel, interval="1m", since=since)]
    assert [{"t": k.t, "open": k.open, "high": k.high, "low": k.low, "close": k.close, "count": k.count,
             "volume": k.volume} for k in candles] == list(want.values())


async def test_redis_losing_its_data_is_an_epoch_gap_then_the_new_stream(make_client, redis, server) -> None:
    channel = "contract.lost"
    c = make_client(server.url)
    got = collect(c.subscribe(channel, since="0-0"))
    await server.ingest(channel, [{"value": 1}, {"value": 2}])
    await until("two ticks", lambda: len(got.ticks) == 2)
    await redis.terminate()
    await redis.start_again()  # no persistence: every stream is gone

    async def store() -> list[str] | None:
        try:
            return await server.ingest(channel, [{"value": 3}])
        except AssertionError:
            return None

    fresh = await until("the server stores again", store)
    await until("the new tick", lambda: got.ticks[-1].id == fresh[0])
    assert [(g.reason, g.detected) for g in got.gaps] == [("epoch", "server")], "announced by the server"
    assert got.ticks[-1].seq == 1, "the new epoch counts from 1"
    assert got.ticks[-1].epoch != got.ticks[0].epoch
