"""The job commands, for producers and operators: submit, wait, status, cancel, result, details,
jobs, rejected, callbacks list/replay."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pollen.cli.common import about_a_job, connected, fail, opt, print_json

if TYPE_CHECKING:
    from pollen.client import Pollen
    from pollen.models import Job

JobId = Annotated[str, typer.Argument(metavar="JOB", help="The job id.", show_default=False)]


def _load_payload(source: str) -> Any:
    if source == "-":
        text = sys.stdin.read()
    elif source.startswith("@"):
        try:
            text = Path(source[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {source[1:]}: {getattr(exc, 'strerror', None) or exc}")
    else:
        text = source
    try:
        return json.loads(text)
    except ValueError as exc:
        hint = ""
        if source.endswith(".json") or Path(source).is_file():
            hint = f" (to read the file, write @{source})"
        fail(f"job payload is not valid JSON: {exc}{hint}")


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _progress(job: Job) -> str:
    line = f"{job.id} {job.status.value} results {len(job.results)}/{job.expected_results}"
    if job.progress is not None:
        line += f" progress {job.progress * 100:.0f}%"
    return line


def _follow(
    client: Pollen, job_id: str, timeout: float, *, running: Callable[[], None] = lambda: None
) -> Job:
    """``client.wait`` with progress on stderr: one updating line on a terminal, else one
    plain line per change. Exit 3 (one line) if the job is still running at ``timeout``,
    after calling ``running``."""
    from pollen import JobNotFound, WaitTimeout

    live = sys.stderr.isatty()
    shown = ""

    def show(job: Job) -> None:
        nonlocal shown
        line = _progress(job)
        if line != shown:
            sys.stderr.write(f"\r\x1b[K{line}" if live else f"{line}\n")
            sys.stderr.flush()
            shown = line

    try:
        return client.wait(job_id, timeout, on_change=show)
    except JobNotFound as exc:
        fail(str(exc))
    except WaitTimeout as exc:
        running()
        fail(str(exc), 3)
    finally:
        if live and shown:
            sys.stderr.write("\n")


def submit(
    payload: Annotated[
        str,
        typer.Argument(
            metavar="PAYLOAD", help="Job JSON, @file.json, or - for stdin.", show_default=False
        ),
    ],
    wait: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="Wait up to this long, showing progress."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help='Print one JSON document: {"job_id": ...}, or the finished job.'
        ),
    ] = False,
) -> None:
    """Enqueue a job (see schema/job-request.schema.json) and print its id.

    With --wait, print the finished job as JSON; exit 1 if it did not succeed, 3 if still running.
    With --json, stdout is exactly one JSON document; progress stays on stderr (still running
    after --wait: the job as it stands).
    """
    from pollen import InvalidJob

    job = _load_payload(payload)
    with connected() as client:
        try:
            job_id = client.submit_payload(job)
        except InvalidJob as exc:
            fail(str(exc), 2)
        if as_json and wait is None:
            print_json({"job_id": job_id})
        elif not as_json:
            typer.echo(job_id)  # with --json and --wait, the finished job carries its id
        if wait is not None:

            def as_it_stands() -> None:  # still one document, which carries the job's id
                if as_json:
                    print_json(_job_json(client.get(job_id)))

            finished = _follow(client, job_id, wait, running=as_it_stands)
            print_json(_job_json(finished))
            if finished.status.value != "succeeded":
                raise typer.Exit(1)


def wait_for(
    job_id: JobId,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Give up (exit 3) after this long.")
    ] = 600.0,
) -> None:
    """Wait for a job to end, showing its progress; then print its status line.

    Exit 0 if it succeeded, 1 if it failed, timed out or was cancelled, 3 if still running.
    """
    with connected() as client:
        job = _follow(client, job_id, timeout)
    typer.echo(_status_line(job, ""))
    if job.status.value != "succeeded":
        raise typer.Exit(1)


def _status_line(job: Job, last_error: str, *, admission: bool = False) -> str:
    detail = f" ({job.error.code}: {job.error.message})" if job.error else ""
    retrying = f" last error: {last_error}" if last_error and not job.terminal else ""
    where = ""
    if admission:
        where = f" tenant={job.tenant} priority={job.priority}"
        where += f" account={job.account}" if job.account else ""
        where += f" queue reason: {job.queue_reason}" if job.queue_reason else ""
    return (
        f"{job.id} {job.status.value}{detail} polls={job.polls} "
        f"results={len(job.results)}/{job.expected_results} failed={len(job.errors)}{where}"
        f"{retrying}"
    )


def status(job_id: JobId) -> None:
    """Print a job's status, polls and results so far, its tenant and priority, the provider
    account it runs on, why it waits (queued for a capped provider's slot), and the last
    error while retrying."""
    job, fields = about_a_job(
        lambda client: (client.get(job_id), client.store.lifecycle.raw(job_id))
    )
    typer.echo(_status_line(job, fields.get("last_error", ""), admission=True))


def cancel(
    job_id: JobId,
    reason: Annotated[
        str, opt("TEXT", "Why; kept as the job's error message.")
    ] = "cancelled from the command line",
) -> None:
    """Cancel a job: it stops being polled, the provider is asked to cancel its task where it
    documents a call for that, and the completion callback says `cancelled`. A job that has
    already finished stays as it is (exit 0 either way)."""
    outcome = about_a_job(lambda client: client.cancel(job_id, reason=reason))
    typer.echo(outcome.message)


TIMESTAMPS = ("created_at", "submitted_at", "finished_at", "updated_at", "deadline_at")


def _job_json(job: Job) -> dict[str, Any]:
    """A job as ``submit --wait`` and ``jobs --json`` print it: without its request, with ISO
    timestamps."""
    return _with_iso(job.model_dump(mode="json", exclude={"request"}))


def _with_iso(record: dict[str, Any]) -> dict[str, Any]:
    """Add ``<name>_iso`` (ISO 8601, UTC) beside each epoch timestamp, results' included."""
    out = dict(record)
    for name in (*TIMESTAMPS, "next_poll_at", "seen_at", "at"):
        if isinstance(out.get(name), int | float):
            out[f"{name}_iso"] = _iso(out[name])
    for group in ("results", "errors"):
        if isinstance(out.get(group), list):
            out[group] = [_with_iso(item) for item in out[group]]
    return out


def result(
    job_id: JobId,
    raw: Annotated[bool, typer.Option("--raw", help="Include the provider's raw items.")] = False,
) -> None:
    """Print the stored job as JSON: status, results, errors, timings (epoch and ISO 8601)."""
    job = about_a_job(lambda client: client.get(job_id))
    no_raw = {"__all__": {"raw"}}
    exclude: Any = None if raw else {"results": no_raw, "errors": no_raw}
    print_json(_with_iso(job.model_dump(mode="json", exclude=exclude)))


def details(
    job_id: JobId,
    provider: Annotated[
        bool, typer.Option("--provider", help="Ask the provider's own getTaskDetails.")
    ] = False,
) -> None:
    """Print the audit record: the request pollen sent and the provider's response envelope."""
    from pollen.providers.audit import provider_task_details

    def record(client: Pollen) -> dict[str, Any]:
        if provider:
            return provider_task_details(client.settings, client.get(job_id))
        return client.task_details(job_id)

    print_json(about_a_job(record))


def callbacks_list(job_id: JobId) -> None:
    """List the job's deliveries (webhook-id, event, state) and every attempt made.

    Each attempt: its time (ISO 8601), outcome, HTTP status, latency and error.
    """
    deliveries = about_a_job(lambda client: client.callbacks(job_id))
    if not deliveries:
        typer.echo(f"no callback deliveries for {job_id}", err=True)
    for item in deliveries:
        typer.echo(f"{item['webhook_id']}  {item['event']:<9} {item['state']:<9} {item['target']}")
        for attempt in item["attempts"]:
            code = attempt.get("status_code") or "-"
            at = _iso(attempt["at"]) if attempt.get("at") else "-"
            said = attempt.get("error")
            error = f"  {said}" if said and said != f"HTTP {code}" else ""
            typer.echo(
                f"    {at}  {attempt['outcome']:<9} HTTP {code}  "
                f"{attempt['latency_ms']:.0f} ms{error}"
            )


def callbacks_replay(
    job_id: JobId,
    delivery: Annotated[
        str | None, typer.Option(metavar="WEBHOOK_ID", help="Only this webhook-id.")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Also deliveries that were delivered.")
    ] = False,
) -> None:
    """Send the job's dead (or gone) deliveries again, with the same webhook-id."""
    replayed = about_a_job(
        lambda client: client.replay_callbacks(job_id, delivery=delivery, everything=everything)
    )
    if delivery is not None and not replayed:
        fail(f"job {job_id} has no delivery {delivery} (see `pollen callbacks list {job_id}`)")
    typer.echo(f"replayed {len(replayed)} deliveries" + "".join(f"\n  {d}" for d in replayed))


AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(value: str | None, option: str) -> float | None:
    """A time given as an age (``90s``, ``30m``, ``1h``, ``2d``: that long ago) or an ISO 8601
    date-time (UTC unless it names a zone); a mistake is one line and exit 2."""
    from datetime import UTC, datetime

    if value is None:
        return None
    text = value.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in AGO:
        return time.time() - float(text[:-1]) * AGO[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {value!r}: give an age like 30m, 1h, 2d or an ISO 8601 date-time", 2)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--metadata {item!r}: give KEY=VALUE", 2)
        pairs[key] = value
    return pairs


def jobs(
    status: Annotated[list[str] | None, opt("STATUS", "Only this status (repeatable).")] = None,
    provider: Annotated[
        list[str] | None, opt("PROVIDER", "Only this provider (repeatable).")
    ] = None,
    since: Annotated[
        str | None, opt("WHEN", "Created at or after: an age (30m, 1h, 2d) or ISO time.")
    ] = None,
    until: Annotated[
        str | None, opt("WHEN", "Created at or before: an age or an ISO time.")
    ] = None,
    metadata: Annotated[
        list[str] | None, opt("KEY=VALUE", "Metadata the job carries (repeatable).")
    ] = None,
    tenant: Annotated[str | None, opt("NAME", "Only this tenant's jobs.")] = None,
    limit: Annotated[int, opt("N", "Jobs per page (1-1000).")] = 20,
    cursor: Annotated[
        str | None, opt("CURSOR", "Where the previous page ended (it prints the option).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List jobs, newest first, one page at a time; filters combine."""
    from pollen import InvalidJob

    since_at, until_at = _when(since, "--since"), _when(until, "--until")
    pairs = _pairs(metadata or [])
    with connected() as client:
        try:
            page = client.jobs(
                status=status, provider=provider, metadata=pairs or None, tenant=tenant,
                since=since_at, until=until_at, limit=limit, cursor=cursor,
            )  # fmt: skip
        except InvalidJob as exc:
            fail(str(exc), 2)
    if as_json:
        print_json({"jobs": [_job_json(job) for job in page.jobs], "next_cursor": page.next_cursor})
        return
    row = "{:36}  {:10}  {:14}  {:20}  {:7}  {:5}  {}"
    header = ("JOB", "STATUS", "PROVIDER", "CREATED (UTC)", "RESULTS", "POLLS", "TENANT")
    typer.echo(row.format(*header))
    for job in page.jobs:
        results = f"{len(job.results)}/{job.expected_results}"
        typer.echo(
            row.format(
                job.id, job.status.value, job.provider, _iso(job.created_at), results, job.polls,
                job.tenant,
            )
        )  # fmt: skip
    if not page.jobs:
        typer.echo("(no jobs)")
    if page.next_cursor:
        typer.echo(f"more: add --cursor {page.next_cursor}", err=True)


def rejected(
    limit: Annotated[int, opt("N", "How many, newest first (1-1000).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the latest job payloads workers refused (sent by name, e.g. send_task): when, the
    job id (or the message id), the reason and the refusal naming the field."""
    from dataclasses import asdict

    from pollen import InvalidJob

    with connected() as client:
        try:
            refused = client.rejected(limit)
        except InvalidJob as exc:
            fail(str(exc), 2)
    if as_json:
        print_json({"rejected": [_with_iso(asdict(item)) for item in refused]})
        return
    for item in refused:
        who = item.job_id or f"message {item.message_id}"
        typer.echo(f"{_iso(item.at)}  {who}  {item.reason}  {item.error}")
    if not refused:
        typer.echo("(no rejected jobs)")
