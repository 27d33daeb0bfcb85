"""The worker's spans for the steps that act for particular jobs, in those jobs' traces.

A job's trace context is on its record (:data:`pollen.tracing.FIELD`, stored at submit), so a
step continues the job's trace whichever message brought it: the producer's, a retry, the
reconciler's resend. With tracing off nothing is read and nothing is imported.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pollen import tracing
from pollen.models import DEFAULT_TENANT
from pollen.store import keys
from pollen.worker.runtime import Deps

#: what a span needs from a job's record
FIELDS = (tracing.FIELD, "provider", "tenant")


def job_attributes(job_id: str, provider: str | None, tenant: str | None) -> dict[str, str]:
    return {
        tracing.JOB_ID: job_id,
        tracing.PROVIDER: provider or "",
        tracing.TENANT: tenant or DEFAULT_TENANT,
    }


@contextmanager
def job_span(
    deps: Deps, name: str, job_ids: Sequence[str], extra: Mapping[str, Any] | None = None
) -> Iterator[tracing.Span]:
    """A span in the first job's trace (one round trip reads the jobs' records), linked to
    the traces of the others; one job's span carries its id, provider and tenant."""
    if not deps.tracing.on or not job_ids:
        yield tracing.NO_SPAN
        return
    pipe = deps.store.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), *FIELDS)
    rows = pipe.execute()
    parent, provider, tenant = rows[0]
    attributes: dict[str, Any]
    if len(job_ids) == 1:
        attributes = job_attributes(job_ids[0], provider, tenant)
    else:
        providers = sorted({row[1] for row in rows if row[1]})
        attributes = {tracing.JOBS: len(job_ids), tracing.PROVIDER: ",".join(providers)}
    with deps.tracing.span(name, parent=parent, attributes={**attributes, **(extra or {})}) as span:
        for job_id, (traceparent, provider, tenant) in zip(job_ids[1:], rows[1:], strict=True):
            if traceparent != parent:
                span.link(traceparent, job_attributes(job_id, provider, tenant))
        yield span
