"""``pollen.submit`` messages sent to Celery's default queue, which pollen workers do not read.

A plain Celery producer that calls ``send_task("pollen.submit", ...)`` without
``queue="pollen.submit"`` (and without a route) puts the message in the default queue,
``celery``. No pollen worker consumes it, and the job would wait there in silence. On a Redis
broker the reconciler looks at the oldest :data:`LOOK` messages of that queue each round and
moves every ``pollen.submit`` among them to the submit queue (the message's routing key set to
it, so a redelivery goes there too); the worker logs each round's moves as a WARNING naming
the fix. Any other message in the default queue is left as it is.

A message an application's own Celery worker takes from the default queue first never reaches
pollen: that worker rejects it as an unregistered task. Send with ``queue=``.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from pollen import contract
from pollen.store.scripts import text

#: the script that moves one message, in ``pollen/store/lua/``
SCRIPT = "move_stray"
#: Celery's default queue (``task_default_queue``), where a message without a route goes
DEFAULT_QUEUE = "celery"
#: the oldest messages of the default queue looked at per round
LOOK = 100


def rerouted(raw: str | bytes, queue: str) -> str | None:
    """A ``pollen.submit`` message of the default queue as it goes to ``queue``; None for any
    other message (another task, or one that cannot be read)."""
    try:
        message: Any = json.loads(raw)
        if message["headers"]["task"] != contract.SUBMIT:
            return None
        message["properties"]["delivery_info"]["routing_key"] = queue
    except (ValueError, KeyError, TypeError):
        return None
    return json.dumps(message)


class Strays:
    """The submit messages of one Redis broker's default queue."""

    def __init__(self, broker: redis.Redis, queue: str) -> None:
        self.broker = broker
        self.queue = queue
        self._move = broker.register_script(text(SCRIPT))

    def move(self) -> int:
        """Move the ``pollen.submit`` messages among the default queue's oldest to the submit
        queue; how many were moved."""
        if self.queue == DEFAULT_QUEUE:
            return 0  # the submit queue is the default queue: nothing strays
        moved = 0
        for raw in self.broker.lrange(DEFAULT_QUEUE, -LOOK, -1):
            fixed = rerouted(raw, self.queue)
            if fixed is not None:
                moved += int(self._move(keys=[DEFAULT_QUEUE, self.queue], args=[raw, fixed]))
        return moved
