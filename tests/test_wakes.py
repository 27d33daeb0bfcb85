"""The ingress's wake-up batcher (pure asyncio, a fake publisher): pushes of one moment share a
poll message, one job is polled once per message, a full batch goes at once, and a refused
publish reaches every push it carried (so each provider retries)."""

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
    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[Send] = []
        self.fail = fail

    async def __call__(self, message: Send) -> None:
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        self.sent.append(message)

    def items(self) -> list[list[list[str | int]]]:
        return [message.kwargs["items"] for message in self.sent]


async def test_pushes_of_one_moment_share_a_message_and_a_job_is_polled_once() -> None:
    publish = Publisher()
    batcher = WakeBatcher(publish, queue="q", window=0.05, size=50)
    await asyncio.gather(batcher.wake("a", 3), batcher.wake("b", 1), batcher.wake("a", 3))
    assert publish.items() == [[["a", 3], ["b", 1]]]
    [message] = publish.sent
    assert (message.name, message.queue) == (contract.POLL, "q")
    await batcher.wake("c", 2)  # a later push: a message of its own
    assert publish.items()[1:] == [[["c", 2]]]


async def test_a_full_batch_goes_without_waiting_for_the_window() -> None:
    publish = Publisher()
    batcher = WakeBatcher(publish, queue="q", window=30.0, size=2)
    started = asyncio.get_running_loop().time()
    await asyncio.gather(batcher.wake("a", 1), batcher.wake("b", 1))
    assert asyncio.get_running_loop().time() - started < 1.0
    assert publish.items() == [[["a", 1], ["b", 1]]]


async def test_a_refused_publish_fails_every_push_it_carried() -> None:
    publish = Publisher(fail=ConnectionError("broker away"))
    batcher = WakeBatcher(publish, queue="q", window=0.01, size=50)
    outcomes = await asyncio.gather(
        batcher.wake("a", 1), batcher.wake("b", 1), return_exceptions=True
    )
    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    publish.fail = None
    await batcher.wake("a", 1)  # the next push starts a new batch
    assert publish.items() == [[["a", 1]]]
