"""Callback deliveries in Redis: one record per event, with its attempts, schedule and state.

A delivery's id is the ``webhook-id`` the receiver sees and never changes (retries and
replays reuse it). It is derived from the job and the event (``msg_<job>_completed``,
``msg_<job>_partial_<generation>``), so an event noticed twice is still one delivery.

Every delivery that is not finished sits in ``pollen:callbacks:due`` scored by when it must
be tried (again): the periodic round sends the due ones, so a wait of hours is a number in a
sorted set, not a countdown message held in a worker's memory, and a delivery whose message
was lost is simply tried again.

States: pending → sending → delivered | gone (410) | dead (schedule exhausted or refused).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from pollen.store import effects, keys, scripts
from pollen.store.effects import Batch, Lua, Op, cmd

DeliveryState = Literal["pending", "sending", "delivered", "gone", "dead"]
#: delivery states that never change again
FINAL_STATES = ("delivered", "gone", "dead")

#: the scripts of :class:`Outbox`, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = ("create_delivery", "claim_delivery", "record_delivery", "take_due", "replay_delivery")
#: what :meth:`Outbox.claim` answers: ``ok`` to send, ``blocked`` (waits for an earlier event),
#: ``busy`` (another copy sends), ``missing``, or a final state (nothing to do)
Verdict = Literal["ok", "blocked", "busy", "missing", "delivered", "gone", "dead"]


def delivery_id(job_id: str, event: str, suffix: str = "") -> str:
    """The stable ``webhook-id`` of one event of one job."""
    return f"msg_{job_id}_{event}" + (f"_{suffix}" if suffix else "")


@dataclass(frozen=True)
class Delivery:
    id: str
    job_id: str
    event: str
    kind: Literal["http", "celery"]
    target: str  #: callback URL, or the producer's Celery task name
    queue: str | None
    body: str
    state: DeliveryState
    attempts: int
    replays: int
    next_at: float | None
    last_error: str

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Delivery:
        return cls(
            id=fields["id"],
            job_id=fields["job_id"],
            event=fields["event"],
            kind=fields.get("kind", "http"),  # type: ignore[arg-type]
            target=fields["target"],
            queue=fields.get("queue") or None,
            body=fields["body"],
            state=fields["state"],  # type: ignore[arg-type]
            attempts=int(fields.get("attempts") or 0),
            replays=int(fields.get("replays") or 0),
            next_at=float(fields["next_at"]) if fields.get("next_at") else None,
            last_error=fields.get("last_error", ""),
        )


@dataclass(frozen=True)
class DeliveryClaim:
    """A delivery claimed for one attempt, with what the attempt needs (one round trip)."""

    verdict: Verdict
    delivery: Delivery | None = None  #: with ``ok`` and ``blocked``
    gone: bool = False  #: its target answered 410 Gone before
    secret: str = field(default="", repr=False)  #: the job's own callback secret ("" for none)
    finished_at: float | None = None  #: when the job ended, if it has
    wait: float | None = None  #: ``blocked``: seconds until it is due again

    @classmethod
    def from_reply(cls, reply: list[Any]) -> DeliveryClaim:
        verdict, flat, gone, secret, finished_at, wait = reply
        if verdict not in ("ok", "blocked"):
            return cls(verdict)
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return cls(
            verdict,
            Delivery.from_fields(fields),
            gone=bool(gone),
            secret=str(secret),
            finished_at=float(finished_at) if finished_at else None,
            wait=float(wait) if wait else None,
        )


def script_texts() -> dict[str, str]:
    """The outbox's scripts, by name, as sent to Redis (for any client, sync or asyncio)."""
    job = keys.job("")
    return scripts.texts(
        SCRIPTS,
        FINAL_DELIVERY=frozenset(FINAL_STATES),
        JOB_PREFIX=job,
        DELIVERIES_SUFFIX=keys.job_deliveries("").removeprefix(job),
        DELIVERY_PREFIX=keys.delivery(""),
    )


class Outbox:
    """Delivery records in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        #: every script by name, for :mod:`pollen.store.effects` operations run on this client
        self.scripts = {name: client.register_script(text) for name, text in script_texts().items()}

    def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One outbox script, one round trip (Redis failures as ``StoreUnavailable``)."""
        return effects.perform(self.redis, self.scripts, effects.single(Lua(script, keys, args)))

    def create(
        self,
        delivery: str,
        *,
        job_id: str,
        event: str,
        kind: str,
        target: str,
        body: str,
        now: float,
        watch: float,
        ttl: int,
        queue: str | None = None,
    ) -> bool:
        """Store a pending delivery (due again after ``watch`` seconds unless it is sent first).

        False if it already existed: the same event noticed twice is one delivery.
        """
        fields = {
            "id": delivery,
            "job_id": job_id,
            "event": event,
            "kind": kind,
            "target": target,
            "queue": queue or "",
            "body": body,
            "state": "pending",
            "attempts": "0",
            "created_at": repr(now),
            "next_at": repr(now),
        }
        flat = [item for pair in fields.items() for item in pair]
        created = self._call(
            "create_delivery",
            [keys.delivery(delivery), keys.job_deliveries(job_id), keys.DUE],
            [delivery, repr(now + watch), ttl, *flat],
        )
        return bool(created)

    def claim(self, delivery: str, *, now: float, lease: float, recheck: float) -> DeliveryClaim:
        """Claim a delivery for sending, for ``lease`` seconds, with everything the attempt
        needs. It is ``blocked`` instead while an earlier unfinished event of its job goes to
        the same target: pending again, due after that one's next try plus ``recheck``
        seconds (at least ``recheck``)."""
        reply = self._call(
            "claim_delivery",
            [keys.delivery(delivery), keys.GONE, keys.DUE],
            [repr(now), lease, recheck, delivery],
        )
        return DeliveryClaim.from_reply(reply)

    def record(
        self,
        delivery: Delivery,
        attempt: dict[str, Any],
        *,
        state: DeliveryState,
        now: float,
        due_at: float | None = None,
    ) -> int:
        """Log one attempt and move the delivery to ``state`` (pending: due again at ``due_at``;
        gone: its target is never called again).

        Returns the number of attempts made so far.
        """
        entry = json.dumps({"delivery": delivery.id, "event": delivery.event, **attempt})
        return int(
            self._call(
                "record_delivery",
                [
                    keys.delivery(delivery.id),
                    keys.delivery_attempts(delivery.job_id),
                    keys.DUE,
                    keys.DEAD,
                    keys.GONE,
                ],
                [
                    delivery.id,
                    state,
                    entry,
                    repr(due_at if due_at is not None else now),
                    repr(now),
                    attempt.get("error") or "",
                    delivery.target,
                ],
            )
        )

    def take_due(self, *, now: float, limit: int, watch: float) -> list[str]:
        """Deliveries due now (each pushed ``watch`` seconds later in case its message is lost)."""
        ids = self._call("take_due", [keys.DUE], [repr(now), limit, watch])
        return [str(i) for i in ids]


# What the producer reads and replays (store operations, run on either client).


def for_job(
    job_id: str, *, attempts: bool = True
) -> Op[tuple[list[dict[str, str]], list[dict[str, Any]]]]:
    """A job's callback deliveries (their stored fields, in event order) and, with
    ``attempts``, every attempt made."""
    batch: Batch = [cmd("lrange", keys.job_deliveries(job_id), 0, -1)]
    if attempts:
        batch.append(cmd("lrange", keys.delivery_attempts(job_id), 0, -1))
    ids, *raw_attempts = yield batch
    records = (yield [cmd("hgetall", keys.delivery(str(i))) for i in ids]) if ids else []
    made = [json.loads(a) for a in raw_attempts[0]] if raw_attempts else []
    return [r for r in records if r], made


def replay(delivery: str, url: str | None, *, now: float) -> Op[bool]:
    """Make a delivery pending again with a fresh schedule (its webhook-id stays); ``url``: a
    receiver that answered 410 Gone, to call again."""
    batch: Batch = [Lua("replay_delivery", [keys.delivery(delivery), keys.DUE, keys.DEAD],
                        [delivery, now])]  # fmt: skip
    if url is not None:
        batch.append(cmd("srem", keys.GONE, url))
    replies = yield batch
    return bool(replies[0])
