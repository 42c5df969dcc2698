"""The edges a careful user hits: a task cancelled mid-stream, a timeout around one
read, closing mid-handshake, closing a channel and subscribing to it again at once, a
handshake refused by the `ws` bucket, reconnect() during a wait, two readers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from tickstream import Backoff, Client, Tick, TickstreamError

from .conftest import collect
from .support import Producer, assert_exactly_once, free_port, jwt, until

SERVER_ENV = {"TICKSTREAM_RATE_FREE_WS": "100000/s:100000"}
STRICT_ENV = {"TICKSTREAM_RATE_FREE_WS": "1/m:2"}


@pytest.fixture
def silent() -> Iterator[str]:
    """A port that accepts connections and never answers: a handshake that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_a_task_cancelled_mid_stream_leaves_no_socket_and_no_task(server) -> None:
    channel = "life.cancelled"
    seen: list[Tick] = []

    async def consume() -> None:
        async with Client(server.url, token=jwt()) as client:
            async with client.subscribe(channel, since="0-0") as sub:
                async for event in sub:
                    if isinstance(event, Tick):
                        seen.append(event)

    producer = Producer(lambda: server, channel)
    task = asyncio.get_running_loop().create_task(consume())
    await until("ticks flow", lambda: len(seen) >= 10)
    await until("the server counts the socket", lambda: server.metric("tickstream_connections"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await producer.stop()

    async def no_socket() -> bool:
        return await server.metric("tickstream_connections") == 0

    await until("the server has no socket left", no_socket)
    assert await server.metric("tickstream_subscriptions") == 0
    # (the autouse check then finds no task of the library still running)


async def test_a_timeout_around_each_read_loses_nothing(make_client, redis, server) -> None:
    channel = "life.timeouts"
    c = make_client(server.url)
    sub = c.subscribe(channel, since="0-0")
    producer = Producer(lambda: server, channel, every=0.03)
    got: list[Tick] = []
    timeouts = 0
    while len(got) < 60:
        try:
            event = await asyncio.wait_for(anext(sub), 0.01)
        except TimeoutError:
            timeouts += 1
            continue
        assert isinstance(event, Tick)
        got.append(event)
    ids = await producer.stop()
    while got[-1].id != ids[-1]:
        got.append(await asyncio.wait_for(anext(sub), 5))  # type: ignore[arg-type]
    assert timeouts > 0, "some reads were cancelled while waiting"
    assert_exactly_once(got, await redis.stream(channel))
    assert sub.cursor == got[-1].cursor


async def test_closing_while_the_handshake_hangs_returns_at_once(make_client, silent) -> None:
    c = make_client(silent)
    c.subscribe("life.never")
    await until("connecting", lambda: c.state == "connecting")
    await asyncio.wait_for(c.close(), 1)
    assert c.state == "closed"


async def test_close_mid_replay_and_subscribe_again_at_once_gets_its_own_replay(make_client, server, sent) -> None:
    channel = "life.again"
    ids: list[str] = []
    for _ in range(3):
        ids += await server.ingest(channel, [{"value": i, "data": {"pad": "x" * 200}} for i in range(1000)])
    c = make_client(server.url)
    await c.connect()
    for n in range(3):
        first = c.subscribe(channel, since="0-0")
        await until("the replay under way", lambda: first.buffered > 0)
        first.close()  # its frames are still coming: they must not reach the next one
        second = c.subscribe(channel, since="0-0")
        got = collect(second)
        await until("the whole replay", lambda: len(got.ticks) >= len(ids))
        assert [t.id for t in got.ticks] == ids, f"round {n}: every tick from 0-0, once"
        assert got.gaps == []
        second.close()
    await until("each close told the server", lambda: len([m for m in sent if m["type"] == "unsubscribe"]) == 6)


async def test_a_handshake_refused_by_the_ws_bucket_waits_at_least_5_s(make_client, strict) -> None:
    # A subject of its own (buckets live in Redis, shared by the nodes): two `ws`
    # tokens a minute, spent by a first client's handshake and subscribe.
    token = jwt(sub="py-races-limited")
    async with Client(strict.url, token=token) as spend:
        await spend.subscribe("life.spend", since="$").wait_live()
    c = make_client(strict.url, token=token)
    c.subscribe("life.refused", since="$")
    refused = await until("a refusal", lambda: next((i for i in c.states("reconnecting") if i.error), None))
    assert (refused.error.status, refused.error.code) == (429, "rate_limited")
    assert refused.delay >= 5, f"waits at least 5 s ({refused.delay} s)"


async def test_reconnect_skips_the_wait_and_does_nothing_while_connected(make_client, server) -> None:
    port = free_port()  # nothing listens there: every attempt is refused
    c = make_client(f"http://127.0.0.1:{port}", backoff=Backoff(base=60, cap=60))
    c.subscribe("life.nowhere")

    async def long_wait() -> bool:  # a wait of 10 s or more, else skip it and draw again
        if c.state == "reconnecting" and (c.states("reconnecting")[-1].delay or 0) >= 10:
            return True
        c.reconnect()
        return False

    await until("a long backoff", long_wait)
    tries = len(c.states("connecting"))
    c.reconnect()
    await until("tried again at once, not after the wait", lambda: len(c.states("connecting")) > tries, 2)

    ok = make_client(server.url)
    await ok.connect()
    ok.reconnect()
    await asyncio.sleep(0.2)  # a reconnect would show within this; none may
    assert len(ok.states("connecting")) == 1 and ok.state == "connected"


async def test_a_second_reader_is_refused_and_the_first_goes_on(make_client, server) -> None:
    channel = "life.two"
    c = make_client(server.url)
    sub = c.subscribe(channel, since="$")
    got = collect(sub)
    await sub.wait_live()
    await until("the first reader waits", lambda: sub._reading)
    with pytest.raises(RuntimeError):
        await anext(sub)
    with pytest.raises(RuntimeError):
        async for _ in sub:
            pass
    ids = await server.ingest(channel, [{"value": 1}])
    await until("the first reader still gets ticks", lambda: [t.id for t in got.ticks] == ids)
    with pytest.raises(TickstreamError) as raised:
        c.subscribe(channel)
    assert raised.value.code == "already_subscribed"


async def test_leaving_a_loop_without_async_with_unsubscribes(make_client, server) -> None:
    channel = "life.break"
    await server.ingest(channel, [{"value": i} for i in range(20)])
    c = make_client(server.url)
    sub = c.subscribe(channel, since="0-0")
    async for event in sub:
        if isinstance(event, Tick) and event.seq == 5:
            break
    assert sub.closed and channel not in c.subscriptions, "closed by the break, at once"
    assert sub.cursor is not None and sub.cursor.seq == 5

    reading = c.subscribe(channel, cursor=sub.cursor)
    reader = collect(reading).task
    assert reader is not None
    await until("reading", lambda: reading.state == "live")
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await until("closed by the cancel", lambda: reading.closed)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_slow_loop_pauses_the_subscription_and_loses_nothing(make_client, redis, server, sent, transport) -> None:
    channel = f"life.slow.{transport}"
    for _ in range(4):
        await server.ingest(channel, [{"value": i} for i in range(500)])
    c = make_client(server.url, max_buffer=100, transport=transport)

    waiting = c.subscribe(channel, since="0-0")
    await waiting.wait_live()  # no loop has read yet: the whole replay waits, no pause
    assert waiting.buffered == 2000 and not waiting.paused
    waiting.close()

    producer = Producer(lambda: server, channel, every=0.01, batch=3)  # far below MAXLEN meanwhile
    got: list[Tick] = []
    most = 0
    async with c.subscribe(channel, since="0-0") as sub:
        async for event in sub:
            assert isinstance(event, Tick)
            got.append(event)
            most = max(most, sub.buffered)
            await asyncio.sleep(0.001)  # a loop slower than the replay and the producer
            if len(got) == 2500:
                break
    await producer.stop()
    assert most <= 100, f"the buffer held {most} events"
    stream = await redis.stream(channel)
    assert_exactly_once(got, stream[:2500])
    if transport == "websocket":
        pauses = [m for m in sent if m["type"] == "unsubscribe" and m["channel"] == channel]
        assert len(pauses) >= 3, "paused (and resumed) again and again"


async def test_close_during_a_slow_token_call_leaves_nothing(make_client, server) -> None:
    started = asyncio.Event()

    async def slow_token() -> str:
        started.set()
        await asyncio.sleep(30)
        return jwt()

    c = make_client(server.url, token=slow_token)
    c.subscribe("life.slow-token")
    rest = asyncio.get_running_loop().create_task(c.latest("life.slow-token"))  # waits for the same call
    await started.wait()
    await asyncio.wait_for(c.close(), 1)
    with pytest.raises(TickstreamError) as raised:
        await rest
    assert raised.value.code == "closed", "a REST caller is told, not cancelled"
    # (the autouse check finds no task left: the token call ended with the client)


async def test_what_the_client_refuses_before_asking_the_server(make_client, server) -> None:
    c = make_client(server.url)
    for bad, code in (({"seq": "5"}, "bad_seq"), ({"seq": -1}, "bad_seq"), ({"epoch": 5}, "bad_epoch"),
                      ({"rate": 0}, "bad_rate"), ({"candles": "2m"}, "bad_interval"), ({"since": "latest"}, "bad_since")):
        with pytest.raises(TickstreamError) as raised:
            c.subscribe("life.checked", **bad)
        assert raised.value.code == code, bad
    assert c.subscriptions == {}
    await c.close()
    with pytest.raises(TickstreamError) as raised:
        await c.latest("life.checked")
    assert raised.value.code == "closed"
