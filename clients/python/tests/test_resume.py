"""Exactly once through the library, across everything that drops a connection: a
graceful restart (1012), a SIGKILL, a Redis restart, a switch of node, and a saved
cursor in a new client after the service's own restart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tickstream import Cursor, Tick

from .conftest import Recorded, collect
from .support import Producer, Redis, Server, assert_exactly_once, until

REDIS_PERSIST = True


async def through_disruption(
    make_client: Callable[..., Recorded],
    redis: Redis,
    server: Server,
    channel: str,
    disrupt: Callable[[Callable[[Server], None]], Awaitable[Any]],
    url: Any = None,
) -> Recorded:
    """Subscribes from the start of ``channel``, produces while ``disrupt`` runs, and
    checks the ticks handed over equal the stream Redis holds."""
    c = make_client(url or server.url)
    sub = c.subscribe(channel, since="0-0")
    got = collect(sub)
    target = [server]
    producer = Producer(lambda: target[0], channel)
    await until("ticks flow", lambda: len(got.ticks) >= 10)
    await disrupt(lambda s: target.__setitem__(0, s))
    before = len(got.ticks)
    await until("ticks flow again after it", lambda: len(got.ticks) >= before + 20, 30)
    ids = await producer.stop()
    await until("every produced tick handed over", lambda: got.ticks and got.ticks[-1].id == ids[-1])
    assert_exactly_once(got.ticks, await redis.stream(channel))
    assert got.gaps == [], "no gap: nothing was lost"
    await c.close()
    return c


async def test_a_graceful_restart_reconnects_soon_and_resumes_exactly_once(make_client, redis, server) -> None:
    async def restart(_: Any) -> None:
        assert await server.terminate() == 0
        await server.start_again()

    c = await through_disruption(make_client, redis, server, "resume.graceful", restart)
    drop = c.states("reconnecting")[0]
    assert drop.code == 1012, "the close said: server restart"
    assert drop.delay is not None and 0.1 <= drop.delay <= 1.0, "1012 comes back soon"


async def test_a_sigkill_and_restart_resumes_from_the_cursor(make_client, redis, server) -> None:
    async def kill(_: Any) -> None:
        await server.kill9()
        await server.start_again()

    c = await through_disruption(make_client, redis, server, "resume.killed", kill)
    assert c.states("reconnecting")[0].code == 1006, "no close frame: dropped"


async def test_a_redis_restart_keeps_the_socket_and_ticks_resume(make_client, redis, server) -> None:
    async def restart_redis(_: Any) -> None:
        await redis.terminate()
        await redis.start_again()

    c = await through_disruption(make_client, redis, server, "resume.redis", restart_redis)
    assert len(c.states("connected")) == 1, "the socket stayed open"


async def test_a_switch_of_node_takes_the_next_url_and_resumes_there(make_client, redis, server) -> None:
    spare = Server(redis)
    try:
        async def switch(move_producer: Callable[[Server], None]) -> None:
            move_producer(spare)  # node A is gone for good
            await server.kill9()

        c = await through_disruption(make_client, redis, server, "resume.switch", switch, url=[server.url, spare.url])
        assert any(info.url == spare.url for info in c.states("connected")), "connected to the second node"
    finally:
        spare.close()
        await server.start_again()


async def test_a_saved_cursor_resumes_a_new_client_right_after_the_last_tick_handed_over(make_client, server) -> None:
    channel = "resume.saved"
    ids = await server.ingest(channel, [{"value": i} for i in range(30)])
    seen: list[Tick] = []
    async with make_client(server.url) as first:
        async with first.subscribe(channel, since="0-0") as sub:
            async for event in sub:
                if isinstance(event, Tick):
                    seen.append(event)
                if len(seen) == 12:
                    break
        assert sub.state == "closed", "leaving the async with unsubscribes"
        assert sub.cursor == Cursor(ids[11], 12, seen[11].epoch)
        saved = sub.cursor.to_json()  # what a service keeps across its own restart

    more = await server.ingest(channel, [{"value": 100 + i} for i in range(10)])
    async with make_client(server.url) as second:
        async with second.subscribe(channel, cursor=Cursor.from_json(saved)) as sub:
            got = collect(sub)
            await until("resumed to the newest", lambda: got.ticks and got.ticks[-1].id == more[-1])
    assert [t.id for t in got.ticks] == ids[12:] + more
    assert got.ticks[0].seq == 13
