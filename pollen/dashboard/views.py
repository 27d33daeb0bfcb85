"""The dashboard's pages and actions: each reads through :class:`pollen.AsyncPollen` (and the
store's operations for what the client has no method for), then renders one template.

Actions are POSTs carrying the page's CSRF token; they answer with a redirect back to the
job (303), so a reload never repeats them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from pollen import AsyncPollen, InvalidJob, JobNotFound
from pollen.dashboard import charts, present
from pollen.dashboard.security import csrf_ok, same_origin
from pollen.providers import REGISTRY
from pollen.store import lifecycle, stats
from pollen.store.listing import JobPage

#: minutes of finished jobs the overview draws
CHART_MINUTES = 60
MAX_FORM_BYTES = 4096
STATUS_COLOURS = {
    "queued": "#adb5bd",
    "submitted": "#74c0fc",
    "processing": "#4263eb",
    **present.OUTCOME_COLOURS,
}


def _pollen(request: Request) -> AsyncPollen:
    client: AsyncPollen = request.app.state.pollen
    return client


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    templates = request.app.state.templates
    context |= {"csrf": request.app.state.csrf_token, "colours": STATUS_COLOURS}
    response: Response = templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
    return response


async def _counts(client: AsyncPollen) -> stats.Stats:
    return await client.store.run(stats.snapshot(time.time()))


async def jobs(request: Request) -> Response:
    """The jobs table: filters, order, a page, and the counts per state."""
    client = _pollen(request)
    providers = sorted(REGISTRY)
    chosen = present.filters(request.query_params, providers)
    pairs = chosen.pairs()
    since = time.time() - present.AGES[chosen.age] if chosen.age else None
    try:
        page = await client.jobs(
            status=chosen.statuses or None, provider=chosen.providers or None,
            metadata=pairs or None, tenant=chosen.tenant or None, since=since,
            limit=chosen.limit, cursor=chosen.cursor, oldest_first=chosen.oldest_first,
        )  # fmt: skip
    except InvalidJob as exc:  # a cursor that is not one, a tenant that is not a name
        chosen.problems.append(str(exc))
        page = JobPage([], None)
    return render(
        request, "jobs.html", page=page, filters=chosen, counts=await _counts(client),
        statuses=list(STATUS_COLOURS), providers=providers, ages=list(present.AGES),
        page_sizes=present.PAGE_SIZES, now=time.time(),
    )  # fmt: skip


async def counts(request: Request) -> Response:
    """The counts per state as JSON, for the live-updating figures on every page."""
    current = await _counts(_pollen(request))
    return JSONResponse(
        {
            "by_status": current.by_status,
            "inflight": current.inflight,
            "dead_letters": current.dead_letters,
            "overdue": current.overdue,
        }
    )


async def job(request: Request) -> Response:
    """One job: timeline, results, errors, callbacks, audit trail, actions."""
    client = _pollen(request)
    job_id = request.path_params["job_id"]
    try:
        found = await client.get(job_id)
    except JobNotFound as exc:
        return render(request, "missing.html", 404, message=str(exc))
    audit = await client.store.run(lifecycle.audit(job_id))
    deliveries = await client.callbacks(job_id)
    return render(
        request, "job.html", job=found, audit=audit, deliveries=deliveries,
        timeline=present.timeline(found, audit), prompt=present.prompt(found), now=time.time(),
        replayable=[d for d in deliveries if d["state"] in ("dead", "gone")],
        note=request.query_params.get("note", ""),
    )  # fmt: skip


async def overview(request: Request) -> Response:
    """The fleet: finished per minute by outcome, in flight, the oldest, queues, dead letters,
    each tenant's jobs and cost, the slots of capped provider accounts."""
    client = _pollen(request)
    now = time.time()
    current = await _counts(client)
    minutes = await client.store.run(stats.finished_per_minute(now, CHART_MINUTES))
    tenants = await client.store.run(stats.tenants(sorted(REGISTRY)))
    accounts = await client.store.run(stats.accounts(request.app.state.caps, now))
    depths = await asyncio.to_thread(request.app.state.queue_depths)
    in_states = {s: current.by_status.get(s, 0) for s in STATUS_COLOURS}
    return render(
        request, "overview.html", counts=current, now=now,
        finished=charts.finished_per_minute(minutes),
        states=charts.by_status(in_states, STATUS_COLOURS),
        last_hour={s: sum(m.by_status.get(s, 0) for m in minutes) for s in present.TERMINAL},
        queues=list(zip(request.app.state.queue_names, depths, strict=True)),
        tenants=tenants, accounts=accounts,
    )  # fmt: skip


async def _checked_form(request: Request) -> dict[str, str] | None:
    """The action's form fields, or None when its CSRF token or origin is wrong."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES or not same_origin(request.headers):
        return None
    fields = {k: v[0] for k, v in parse_qs(body.decode("latin-1")).items()}
    return fields if csrf_ok(request.app.state.csrf_key, fields.get("csrf")) else None


def _refused() -> Response:
    return PlainTextResponse("refused: the form's CSRF token is missing or wrong\n", 403)


def _back(request: Request, job_id: str, note: str) -> Response:
    """Back to the job's page after an action (behind a path prefix too)."""
    path = request.app.url_path_for("job", job_id=quote(job_id))
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}{path}?{urlencode({'note': note})}", status_code=303)


async def cancel(request: Request) -> Response:
    if await _checked_form(request) is None:
        return _refused()
    job_id = request.path_params["job_id"]
    try:
        outcome = await _pollen(request).cancel(job_id, reason="cancelled from the dashboard")
    except JobNotFound as exc:
        return render(request, "missing.html", 404, message=str(exc))
    return _back(request, job_id, outcome.message)


async def replay(request: Request) -> Response:
    if await _checked_form(request) is None:
        return _refused()
    job_id = request.path_params["job_id"]
    try:
        replayed = await _pollen(request).replay_callbacks(job_id)
    except JobNotFound as exc:
        return render(request, "missing.html", 404, message=str(exc))
    return _back(request, job_id, f"replayed {len(replayed)} callback deliveries")
