"""Redis memory by key type, per in-flight job, broker messages included.

Every key of the broker's and the store's databases is counted by its type (``SCAN``); up to
:data:`SAMPLE` keys of each type are measured with ``MEMORY USAGE`` (which itself samples a
few elements of a big list or hash), and a type's bytes are its mean times its count. A key's
type is its name with the job id (or any other id) taken out: pollen's keys by their prefixes
in :mod:`pollen.store.keys` (``pollen:job:<id>:results``...), kombu's queues by name,
``unacked`` and ``unacked_index`` (messages taken by a worker, countdown polls among them),
Celery's ``celery-task-meta-<id>``, the baseline's ``baseline:job:<id>``. The type of a
sampled key of each (list, hash...) is in the result too.

At 100,000 jobs a pass is a few hundred ``SCAN`` calls and a few hundred ``MEMORY USAGE``
calls, about 0.6 s; the sampler takes one when the jobs in flight reach a new peak,
no more often than its time budget allows (:class:`bench.sampling.Sampler`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import redis

from bench import baseline
from pollen.store import keys

#: keys measured with MEMORY USAGE per key type
SAMPLE = 20
#: keys asked for per SCAN call
SCAN_COUNT = 1000
#: key prefixes followed by an id (a job's, a delivery's, a worker's, a minute)
ID_PREFIXES = (
    keys.job(""),
    keys.delivery(""),
    keys.rejected(""),
    keys.held(""),
    keys.FINISHED_PREFIX,
    baseline.key(""),
)
#: ids elsewhere in a name: a UUID (dashed or not), a run of digits (the bench's job labels)
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|\d{4,}")


def key_type(key: str) -> str:
    """The key's name with its id replaced by ``<id>``."""
    for prefix in ID_PREFIXES:
        if key.startswith(prefix):
            _, sep, rest = key[len(prefix) :].partition(":")
            return f"{prefix}<id>{sep}{rest}"
    return ID.sub("<id>", key)


class Breakdown:
    """One pass over the given databases (``{label: client}``)."""

    def __init__(self, clients: dict[str, redis.Redis]) -> None:
        self.clients = clients
        #: Redis commands the passes sent (taken off "redis commands / job")
        self.commands = 0

    def take(self) -> dict[str, dict[str, Any]]:
        """``{"<db label> <key type>": {"type", "keys", "sampled", "bytes"}}``."""
        out: dict[str, dict[str, Any]] = {}
        for label, client in self.clients.items():
            counts, samples = self._scan(client)
            sizes, types = self._measure(client, samples, counts)
            for kind, count in counts.items():
                measured = [size for k in samples[kind] if (size := sizes.get(k)) is not None]
                mean = sum(measured) / len(measured) if measured else 0.0
                out[f"{label} {kind}"] = {
                    "type": types[kind],
                    "keys": count,
                    "sampled": len(measured),
                    "bytes": round(mean * count),
                }
        return out

    def _scan(self, client: redis.Redis) -> tuple[Counter[str], dict[str, list[str]]]:
        counts: Counter[str] = Counter()
        samples: dict[str, list[str]] = {}
        cursor = 0
        while True:
            cursor, found = client.scan(cursor, count=SCAN_COUNT)
            self.commands += 1
            for found_key in found:
                key = _text(found_key)
                kind = key_type(key)
                counts[kind] += 1
                chosen = samples.setdefault(kind, [])
                if len(chosen) < SAMPLE:
                    chosen.append(key)
            if cursor == 0:
                return counts, samples

    def _measure(
        self, client: redis.Redis, samples: dict[str, list[str]], counts: Counter[str]
    ) -> tuple[dict[str, int | None], dict[str, str]]:
        """MEMORY USAGE of every sampled key; the TYPE of each key type's first one. A type
        with few keys (a queue, an index) has them all measured whole (``SAMPLES 0``): Redis's
        own sampling of a few elements misjudges a long list by a sixth."""
        names = [name for chosen in samples.values() for name in chosen]
        with client.pipeline(transaction=False) as pipe:
            for kind, chosen in samples.items():
                whole = counts[kind] <= SAMPLE
                for name in chosen:
                    pipe.memory_usage(name, samples=0 if whole else None)
            for chosen in samples.values():
                pipe.type(chosen[0])
            answers: list[Any] = pipe.execute() if names else []
        self.commands += len(answers)
        sizes = dict(zip(names, answers, strict=False))
        kinds = answers[len(names) :]
        types = {kind: _text(found) for kind, found in zip(samples, kinds, strict=True)}
        return sizes, types


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def per_job(kinds: dict[str, dict[str, Any]], inflight: int) -> dict[str, dict[str, Any]]:
    """Each key type's keys, bytes and bytes per in-flight job, the biggest first."""
    ordered = sorted(kinds.items(), key=lambda item: -item[1]["bytes"])
    return {
        kind: {**found, "bytes_per_job": round(found["bytes"] / inflight, 1) if inflight else 0.0}
        for kind, found in ordered
    }
