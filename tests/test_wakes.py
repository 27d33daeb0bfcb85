"""The ingress's wake-up batcher (pure asyncio, a fake publisher): the first push's poll goes
at once; pushes that arrive while a publish is on its way share the next message; one job is
polled once per message; a batch holds at most ``size`` jobs; a refused publish reaches every
push it carried (so each provider retries)."""

from __future__ import annotations

import asyncio

import pytest

from pollen import contract
from pollen.ingress.wakes import WakeBatcher
from pollen.producer import Send

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Publisher:
    """Records messages; the first publish waits for ``release`` when ``hold`` is set."""

    def __init__(self, fail: Exception | None = None, hold: bool = False) -> None:
        self.sent: list[Send] = []
        self.fail = fail
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, message: Send) -> None:
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append(message)

    def items(self) -> list[list[list[str | int]]]:
        return [message.kwargs["items"] for message in self.sent]


async def test_a_lone_push_goes_at_once_and_pushes_meanwhile_share_the_next_message() -> None:
    publish = Publisher(hold=True)
    batcher = WakeBatcher(publish, queue="q", size=50)
    first = asyncio.create_task(batcher.wake("a", 3))
    await asyncio.sleep(0.01)  # its publish is on its way (held)
    later = [asyncio.create_task(batcher.wake(j, n)) for j, n in [("b", 1), ("c", 2), ("b", 1)]]
    await asyncio.sleep(0.01)
    assert not first.done() and not any(task.done() for task in later)
    publish.release.set()
    await asyncio.gather(first, *later)
    assert publish.items() == [[["a", 3]], [["b", 1], ["c", 2]]]
    assert {(m.name, m.queue) for m in publish.sent} == {(contract.POLL, "q")}


async def test_a_batch_holds_at_most_size_jobs() -> None:
    publish = Publisher(hold=True)
    batcher = WakeBatcher(publish, queue="q", size=2)
    waits = [asyncio.create_task(batcher.wake(j, 1)) for j in "abcde"]
    await asyncio.sleep(0.01)
    publish.release.set()
    await asyncio.gather(*waits)
    assert publish.items() == [[["a", 1], ["b", 1]], [["c", 1], ["d", 1]], [["e", 1]]]


async def test_a_refused_publish_fails_every_push_it_carried() -> None:
    publish = Publisher(fail=ConnectionError("broker away"))
    batcher = WakeBatcher(publish, queue="q", size=50)
    outcomes = await asyncio.gather(
        batcher.wake("a", 1), batcher.wake("b", 1), return_exceptions=True
    )
    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    publish.fail = None
    await batcher.wake("a", 1)  # the next push starts afresh
    assert publish.items() == [[["a", 1]]]
