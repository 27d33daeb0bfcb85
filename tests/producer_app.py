"""A producer's own Celery app, as a separate process would have it: it never imports pollen.

Its task receives the final result of a job (pollen's Python callback) and records it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

app = Celery("producer", broker=os.environ.get("PRODUCER_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="myapp")


@app.task(name="myapp.video_done")
def video_done(result: dict[str, Any]) -> None:
    client = redis.Redis.from_url(os.environ["PRODUCER_RESULTS"])
    client.rpush("producer:results", json.dumps(result))
    client.close()
