"""Redis and HTTP clients, built from settings. One of each per worker process."""

from __future__ import annotations

import httpx
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pollen.settings import Settings


def redis_client(url: str) -> redis.Redis:
    """A Redis client that rides out a restart: reconnects with backoff for about 20 s."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=15,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def http_client(settings: Settings) -> httpx.Client:
    """The pooled keep-alive client shared by all provider and callback calls in a process."""
    return httpx.Client(
        timeout=httpx.Timeout(settings.http_timeout, connect=10.0),
        limits=httpx.Limits(
            max_connections=settings.http_max_connections,
            max_keepalive_connections=settings.http_max_connections,
        ),
        follow_redirects=False,
        headers={"User-Agent": "pollen/0.1"},
    )
