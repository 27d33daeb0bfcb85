"""Health checks for operators and probes: is Redis reachable, is a worker alive?

``pollen health`` asks the fleet (a Celery ping); ``pollen health --local`` is for a worker
pod's own probes: the worker's heartbeat file is fresh and Redis answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pollen.errors import StoreUnavailable
from pollen.settings import Settings, is_redis_url
from pollen.store import durability
from pollen.store.connection import Master, master, probe, reason

HEARTBEAT_MAX_AGE = 60.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def touch_heartbeat(path: Path) -> None:
    """Mark this worker alive (called on every Celery worker heartbeat, about every 2 s)."""
    path.touch(exist_ok=True)


def check_reachable(url: str, name: str, master: Master | None = None) -> Check:
    error = probe(url, master=master)
    if error is None:
        return Check(name, True, "answers PING")
    return Check(name, False, f"unreachable: {error}")


def check_broker(url: str, master: Master | None = None) -> Check:
    """A Redis broker answers PING; another (RabbitMQ) accepts a connection."""
    if is_redis_url(url):
        return check_reachable(url, "broker", master)
    from kombu.connection import Connection

    try:
        with Connection(url, connect_timeout=3) as connection:  # type: ignore[no-untyped-call]
            connection.connect()
    except Exception as exc:  # kombu raises the transport's own errors
        return Check("broker", False, f"unreachable: {exc}")
    return Check("broker", True, "accepts a connection")


def check_workers(settings: Settings, timeout: float = 2.0) -> Check:
    from pollen.contract import producer_app

    app = producer_app(settings)
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception as exc:  # the broker itself is down: kombu raises various errors
        return Check("workers", False, f"ping failed: {reason(exc, settings.broker)}")
    finally:
        app.close()
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Check("workers", False, f"no worker answered a ping within {timeout:g}s")
    return Check("workers", True, f"{len(names)} answered: {', '.join(names)}")


def check_heartbeat(path: Path, max_age: float = HEARTBEAT_MAX_AGE) -> Check:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return Check("heartbeat", False, f"{path} does not exist (worker not started?)")
    if age > max_age:
        return Check("heartbeat", False, f"last heartbeat {age:.0f}s ago (limit {max_age:g}s)")
    return Check("heartbeat", True, f"last heartbeat {age:.1f}s ago")


def check_data_loss(url: str, recent: float = 900.0, master: Master | None = None) -> Check:
    """Fails for ``recent`` seconds after workers found the store emptied under them."""
    try:
        loss = durability.last_loss(url, master=master)
    except StoreUnavailable as exc:
        return Check("durability", False, f"cannot read: {exc}")
    if not loss:
        return Check("durability", True, "no data loss detected")
    age = time.time() - float(loss["detected_at"])
    epoch = str(loss["lost_epoch"])
    detail = f"the store lost its data {age:.0f}s ago (epoch {epoch})"
    return Check("durability", age > recent, detail)


def run_checks(settings: Settings, *, local: bool) -> list[Check]:
    sentinel = master(settings)
    checks = [check_reachable(settings.redis_url, "store", sentinel)]
    if not local and checks[0].ok:
        checks.append(check_data_loss(settings.redis_url, master=sentinel))
    if settings.broker != settings.redis_url:
        checks.append(check_broker(settings.broker, sentinel))
    checks.append(check_heartbeat(settings.heartbeat_file) if local else check_workers(settings))
    return checks
