"""FleetWatch fan-out: every watcher hears each change; a watcher that falls behind is cut
off with a marker instead of buffering without bound."""

from __future__ import annotations

import asyncio
import threading

from cloud.server.plane import FleetWatch


def test_changes_from_other_threads_reach_every_watcher() -> None:
    async def main() -> tuple[list[str | None], list[str | None]]:
        watch = FleetWatch()
        (_, q1), (_, q2) = watch.subscribe(), watch.subscribe()
        t = threading.Thread(target=lambda: [watch.publish(f"d{i}") for i in range(3)])
        t.start()
        t.join()
        got1 = [await asyncio.wait_for(q1.get(), 5) for _ in range(3)]
        got2 = [await asyncio.wait_for(q2.get(), 5) for _ in range(3)]
        watch.close()
        assert await asyncio.wait_for(q1.get(), 5) is None  # shutdown ends the stream
        return got1, got2

    got1, got2 = asyncio.run(main())
    assert got1 == got2 == ["d0", "d1", "d2"]


def test_a_watcher_that_falls_behind_gets_an_overflow_marker() -> None:
    async def main() -> list[str | None]:
        watch = FleetWatch(queue_size=2)
        token, queue = watch.subscribe()
        for i in range(5):
            watch.publish(f"d{i}")
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks run
        await asyncio.sleep(0)
        items = []
        while not queue.empty():
            items.append(queue.get_nowait())
        watch.unsubscribe(token)
        assert len(watch) == 0
        return items

    items = asyncio.run(main())
    assert "\x00overflow" in items
    assert len(items) <= 2
