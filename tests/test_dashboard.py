"""The jobs dashboard against real parts: the session's Redis, worker and simulator, the app
served by uvicorn on a free port, its HTML parsed (BeautifulSoup) rather than searched.

Covers every page with real jobs, the filters and paging of the jobs table, the counts,
that secrets never reach a page, basic auth on every route and action, CSRF on actions, and
the command line's mistakes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from bs4 import BeautifulSoup, Tag

from pollen import JobStatus, Pollen, payloads
from pollen.callbacks import webhooks
from pollen.dashboard import present
from pollen.dashboard.security import Credentials, csrf_ok, csrf_token
from pollen.local.servers import CallbackReceiver, DashboardServer, Worker, free_port
from pollen.settings import Settings, parse_basic_auth
from pollen.store import admission
from pollen.store.lifecycle import Move
from tests.conftest import eventually
from tests.helpers import capped, queue_for_slots, video_request
from tests.helpers import image_request as image

USER, PASSWORD = "ops", "correct horse battery"
CREDENTIALS = Credentials(USER, PASSWORD)
#: every route, with the method it answers (the job id is filled in)
ROUTES = [
    ("GET", "/"),
    ("GET", "/overview"),
    ("GET", "/api/counts"),
    ("GET", "/jobs/{job}"),
    ("GET", "/static/dashboard.css"),
    ("GET", "/static/live.js"),
    ("POST", "/jobs/{job}/cancel"),
    ("POST", "/jobs/{job}/replay"),
]


@pytest.fixture(scope="module")
def dashboard(settings: Settings) -> Iterator[str]:
    with DashboardServer(settings, CREDENTIALS, free_port()) as server:
        yield server.url


@pytest.fixture
def web(dashboard: str, clean: None) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dashboard, auth=(USER, PASSWORD), timeout=10) as client:
        yield client


def page(web: httpx.Client, path: str, **params: Any) -> BeautifulSoup:
    answer = web.get(path, params=params) if params else web.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    return BeautifulSoup(answer.text, "html.parser")


def rows(soup: BeautifulSoup) -> list[str]:
    """The job ids of the jobs table, in order."""
    return [str(tr["data-job"]) for tr in soup.select("#jobs-table tbody tr[data-job]")]


def states(client: Pollen, job_id: str) -> list[str]:
    return [delivery["state"] for delivery in client.callbacks(job_id)]


def text(node: Tag | None) -> str:
    assert node is not None
    return " ".join(node.get_text(" ").split())


# --- pages ------------------------------------------------------------------------------------


def test_jobs_table_filters_by_status_provider_metadata_and_age(
    worker: Worker, client: Pollen, web: httpx.Client
) -> None:
    ads = [client.submit("runware", image(f"ad {i}"), metadata={"team": "ads"}) for i in range(2)]
    web_job = client.submit("runware", image("a banner"), metadata={"team": "web"})
    failing = client.submit("runware", video_request([0.2], errors=["timeoutProvider"]))
    for job_id in [*ads, web_job, failing]:
        client.wait(job_id, 30)
    everything = page(web, "/")
    assert set(rows(everything)) == {*ads, web_job, failing}
    assert rows(everything)[0] == failing  # newest first
    failed_row = everything.select_one(f'tr[data-job="{failing}"]')
    assert failed_row is not None and failed_row["data-status"] == "failed"
    assert "timeoutProvider" in text(failed_row.select_one(".why"))
    assert rows(page(web, "/", status="failed")) == [failing]
    assert set(rows(page(web, "/", status=["succeeded"], metadata="team=ads"))) == set(ads)
    assert rows(page(web, "/", metadata="team=web, missing=")) == []
    assert rows(page(web, "/", provider="useapi_runway")) == []
    assert len(rows(page(web, "/", age="15m"))) == 4
    oldest = page(web, "/", order="oldest")
    assert rows(oldest) == rows(everything)[::-1]
    # the filters are echoed in the form, and the images show as thumbnails
    checked = [str(box["value"]) for box in oldest.select("input[name=status][checked]")]
    assert checked == []
    shown = page(web, "/", status="succeeded", metadata="team=ads")
    assert [str(b["value"]) for b in shown.select("input[name=status][checked]")] == ["succeeded"]
    metadata_box = shown.select_one("#metadata")
    assert metadata_box is not None and metadata_box["value"] == "team=ads"
    thumbs = shown.select("td.preview img")
    assert len(thumbs) == 2 and all(str(t["src"]).startswith("http") for t in thumbs)
    bad = page(web, "/", status="nonsense", metadata="novalue", cursor="!!")
    problems = [text(p) for p in bad.select(".problem")]
    assert any("nonsense" in p for p in problems) and any("novalue" in p for p in problems)
    assert any("cursor" in p for p in problems)


def test_jobs_table_pages_with_a_cursor_and_shows_live_counts(
    client: Pollen, web: httpx.Client
) -> None:
    # stored without a submit message: they stay queued whatever the worker does
    created = []
    for i in range(30):
        payload = {"provider": "runware", "request": image(f"p{i}"), "job_id": f"queued-{i:02d}"}
        payloads.accept(client.settings, client.store, payload, now=time.time())
        created.append(f"queued-{i:02d}")
    first = page(web, "/", status="queued")
    assert len(rows(first)) == 25
    assert first.select_one("#first-page") is None
    following = first.select_one("#next-page")
    assert following is not None
    second = page(web, str(following["href"]))
    assert len(rows(second)) == 5 and second.select_one("#next-page") is None
    assert second.select_one("#first-page") is not None
    assert sorted(rows(first) + rows(second)) == created
    assert len(rows(page(web, "/", status="queued", limit=50))) == 30
    header = first.select_one('#live-counts [data-count="queued"]')
    assert text(header) == "30"
    counts = web.get("/api/counts").json()
    assert counts["by_status"]["queued"] == 30 and counts["inflight"] == 30
    assert counts["dead_letters"] == 0


def test_job_page_shows_timeline_videos_failed_generation_callbacks_and_audit(
    worker: Worker, client: Pollen, web: httpx.Client, receiver: CallbackReceiver
) -> None:
    job_secret = webhooks.new_secret()
    request = video_request([0.2, 0.4, 0.6, 0.3], errors=[None, None, None, "timeoutProvider"])
    job_id = client.submit(
        "runware", request, callback_url=f"{receiver.url}/hook", callback_secret=job_secret,
        events=["partial", "completed"], metadata={"order": "77"},
    )  # fmt: skip
    job = client.wait(job_id, 30)
    eventually(lambda: len(receiver.received("/hook")) >= 4, what="the callbacks")
    eventually(
        lambda: all(d["state"] == "delivered" for d in client.callbacks(job_id)),
        what="every delivery recorded",
    )
    answer = web.get(f"/jobs/{job_id}")
    soup = BeautifulSoup(answer.text, "html.parser")
    assert text(soup.select_one("#job-status")) == job.status.value
    steps = soup.select("#timeline li")
    assert [s["data-step"] for s in steps] == ["queued", "submitted", "processing", "succeeded"]
    assert all("done" in s["class"] for s in steps)
    videos = soup.select("#results video")
    assert [v["src"] for v in videos] == [r.url for r in job.results] and len(videos) == 3
    captions = [text(f) for f in soup.select("#results figcaption")]
    assert all(r.url and r.url[:40] in c for r, c in zip(job.results, captions, strict=True))
    errors = soup.select("#generation-errors tbody tr")
    assert len(errors) == 1 and "timeoutProvider" in text(errors[0])
    deliveries = soup.select("#deliveries tbody.delivery")
    assert len(deliveries) == 4
    assert {d["data-state"] for d in deliveries} == {"delivered"}
    first_attempt = deliveries[0].select("tr.attempt td")
    assert "delivered" in text(deliveries[0]) and "200" in [text(td) for td in first_attempt]
    assert f"{receiver.url}/hook" in text(soup.select_one(".facts"))  # behind auth: shown
    assert "order=77" in text(soup.select_one(".facts"))
    summaries = [text(s) for s in soup.select("#audit summary")]
    assert summaries[0].startswith("request as submitted")
    assert any(s.startswith("request sent to runware") for s in summaries)
    assert any(s.startswith("response envelope") for s in summaries)
    # nothing secret: the job's signing secret, the workers' secret, the provider key
    for secret in (job_secret, client.settings.runware.api_key.get_secret_value()):
        assert secret not in answer.text
    from tests.conftest import WEBHOOK_SECRET

    assert WEBHOOK_SECRET not in answer.text
    assert soup.select_one("#cancel") is None and soup.select_one("#replay") is None


def test_a_stored_copy_is_shown_beside_the_provider_url(client: Pollen, web: httpx.Client) -> None:
    from pollen.models import GenerationResult, StoredCopy

    payload = {"provider": "runware", "request": image("a fox"), "job_id": "rehosted"}
    payloads.accept(client.settings, client.store, payload, now=time.time())
    result = GenerationResult(
        id="gen-1", kind="image", url="https://provider.example/gen-1.png", seen_at=time.time(),
        stored=StoredCopy(status="stored", url="https://files.example/rehosted/gen-1.png"),
    )  # fmt: skip
    client.store.redis.hset("pollen:job:rehosted:results", "gen-1", result.model_dump_json())
    client.store.redis.rpush("pollen:job:rehosted:order", "gen-1")
    soup = page(web, "/jobs/rehosted")
    figure = soup.select_one("#results figure")
    assert figure is not None
    img = figure.select_one("img")
    assert img is not None and img["src"] == "https://files.example/rehosted/gen-1.png"
    links = [str(a["href"]) for a in figure.select("a")]
    assert links == [
        "https://provider.example/gen-1.png",
        "https://files.example/rehosted/gen-1.png",
    ]
    assert "stored" in text(figure.select_one(".stored-stored"))


def test_an_unknown_job_is_a_404_page(web: httpx.Client) -> None:
    answer = web.get("/jobs/no-such-job")
    assert answer.status_code == 404
    soup = BeautifulSoup(answer.text, "html.parser")
    assert "no-such-job" in text(soup.select_one(".problem"))


def test_overview_shows_finished_per_minute_in_flight_queues_and_dead_letters(
    worker: Worker, client: Pollen, web: httpx.Client
) -> None:
    done = [client.submit("runware", image(f"o{i}")) for i in range(3)]
    failing = client.submit("runware", video_request([0.2], errors=["timeoutProvider"]))
    for job_id in [*done, failing]:
        client.wait(job_id, 30)
    payload = {"provider": "runware", "request": image("waits"), "job_id": "still-queued"}
    payloads.accept(client.settings, client.store, payload, now=time.time() - 90)
    soup = page(web, "/overview")
    last_hour = {str(b["data-last-hour"]): int(text(b)) for b in soup.select("[data-last-hour]")}
    assert last_hour == {"succeeded": 3, "failed": 1, "timed_out": 0, "cancelled": 0}
    bars = [str(t.get_text()) for t in soup.select("#finished-chart rect title")]
    drawn: dict[str, int] = {}
    for bar in bars:  # "19:42 UTC: 3 succeeded"
        count, status = bar.rsplit(": ", 1)[1].split()
        drawn[status] = drawn.get(status, 0) + int(count)
    assert drawn == {"succeeded": 3, "failed": 1}
    assert text(soup.select_one("#inflight")) == "1"
    oldest = soup.select_one(".tile a.mono")
    assert oldest is not None and oldest["href"] == "/jobs/still-queued"
    queues = {str(b["data-queue"]): int(text(b)) for b in soup.select("[data-queue]")}
    assert set(queues) == {"pollen.submit", "pollen.poll", "pollen.callbacks"}
    assert text(soup.select_one("#dead-letters")) == "0"
    states = [str(t.get_text()) for t in soup.select("#states-chart rect title")]
    assert "3 succeeded" in states and "1 queued" in states


def test_overview_shows_tenants_and_the_slots_of_capped_accounts(
    client: Pollen, settings: Settings, web: httpx.Client
) -> None:
    jobs = [("a-1", "acme"), ("a-2", "acme"), ("b-1", "beta"), ("b-2", "beta")]
    admitted = queue_for_slots(settings, client.store, jobs, slots=2)
    assert sorted(admitted.admitted) == ["a-1", "b-1"]
    client.store.lifecycle.transition_many([Move("a-1", JobStatus.SUBMITTED)], now=time.time())
    with (
        DashboardServer(capped(settings, 2), None, free_port()) as server,
        httpx.Client(base_url=server.url, timeout=10) as capped_web,
    ):
        soup = page(capped_web, "/overview")
        tenants = {
            str(row["data-tenant"]): {
                str(td["data-col"]): text(td) for td in row.select("td[data-col]")
            }
            for row in soup.select("#tenants tbody tr")
        }
        assert tenants == {
            "acme": {"queued": "1", "waiting": "1", "running": "1", "finished": "0", "cost": "0.0"},
            "beta": {"queued": "2", "waiting": "1", "running": "0", "finished": "0", "cost": "0.0"},
        }
        link = soup.select_one('#tenants tr[data-tenant="beta"] a')
        assert link is not None and link["href"] == "/?tenant=beta"
        assert rows(page(capped_web, str(link["href"]))) == ["b-2", "b-1"]
        slots = soup.select_one('#accounts tr[data-account="runware/default"]')
        assert slots is not None and "full" in slots["class"]
        cells = {str(td["data-col"]): text(td) for td in slots.select("td[data-col]")}
        assert cells == {"in-use": "2", "cap": "2", "waiting": "2"}
        now = time.time()  # a capacity refusal: one slot back, the cap lowered to 1 a while
        client.store.run(
            admission.admit(
                "runware", now=now, limit=0, caps=[("default", 2)], shares={},
                submit_watch=now, grace=1, requeue=[("b-1", "default", "capacity")],
                cooldown_until=now + 60,
            )
        )  # fmt: skip
        lowered = page(capped_web, "/overview").select_one(
            '#accounts tr[data-account="runware/default"]'
        )
        assert lowered is not None
        assert "1 lowered from 2 after a capacity refusal" in text(
            lowered.select_one('[data-col="cap"]')
        )
    uncapped = page(web, "/overview")  # a dashboard told of no cap shows no slots
    assert uncapped.select_one("#accounts") is None
    assert len(uncapped.select("#tenants tbody tr")) == 2


def test_job_page_shows_tenant_priority_account_and_why_it_waits(
    client: Pollen, settings: Settings, web: httpx.Client
) -> None:
    admitted = queue_for_slots(settings, client.store, [("held", "acme"), ("waits", "beta")], 1)
    assert list(admitted.admitted) == ["held"]
    held = page(web, "/jobs/held")
    assert text(held.select_one("#job-tenant")) == "acme · priority 0 · account default"
    assert held.select_one("#queue-reason") is None
    waits = page(web, "/jobs/waits")
    assert text(waits.select_one("#job-tenant")) == "beta · priority 0"
    reason = text(waits.select_one("#queue-reason"))
    assert reason == client.get("waits").queue_reason
    assert reason.startswith(
        "waiting for capacity on runware (as it joined the queue: 1 of 1 slots in use"
    )
    filtered = page(web, "/", tenant="bad name")
    assert rows(filtered) == [] and any(
        "tenant 'bad name'" in text(p) for p in filtered.select(".problem")
    )
    box = page(web, "/", tenant="acme").select_one("#tenant")
    assert box is not None and box["value"] == "acme"


def test_queue_depths_are_unknown_for_another_or_an_unreachable_broker() -> None:
    from pollen.dashboard.app import _depth_reader

    closed = f"amqp://guest@127.0.0.1:{free_port()}//"  # not 5672: CI installs RabbitMQ
    assert _depth_reader(closed, ["a", "b"], 0.5)() == [None, None]
    started = time.monotonic()
    assert _depth_reader(f"redis://127.0.0.1:{free_port()}/0", ["a"], 0.5)() == [None]
    assert time.monotonic() - started < 0.5 + 1.0  # the dashboard's bound, not a worker's 20 s


# --- actions, auth, CSRF --------------------------------------------------------------------


def test_replay_from_the_job_page_sends_the_dead_callback_again(
    worker: Worker, client: Pollen, web: httpx.Client, receiver: CallbackReceiver
) -> None:
    receiver.script("/down", *[(503, {}, 0.0)] * 4)
    job_id = client.submit("runware", image("dead"), callback_url=f"{receiver.url}/down")
    eventually(lambda: states(client, job_id) == ["dead"], what="a dead letter")
    soup = page(web, f"/jobs/{job_id}")
    form = soup.select_one("#replay").find_parent("form")  # type: ignore[union-attr]
    assert form is not None and form["method"] == "post"
    token = form.select_one("input[name=csrf]")
    assert token is not None
    refused = web.post(str(form["action"]), data={"csrf": "forged"})
    assert refused.status_code == 403
    assert client.callbacks(job_id)[0]["state"] == "dead"
    answer = web.post(str(form["action"]), data={"csrf": str(token["value"])})
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"/jobs/{job_id}?note=")
    eventually(lambda: states(client, job_id) == ["delivered"], what="replayed")
    after = page(web, answer.headers["location"])
    assert "replayed 1 callback deliveries" in text(after.select_one("#note"))
    attempts = after.select("#deliveries tbody.delivery tr.attempt")
    assert len(attempts) == 5 and "delivered" in text(attempts[-1])
    assert after.select_one("#replay") is None


def test_cancel_from_the_job_page(worker: Worker, client: Pollen, web: httpx.Client) -> None:
    job_id = client.submit("runware", video_request([30.0]))
    eventually(lambda: client.get(job_id).status is JobStatus.PROCESSING, what="processing")
    soup = page(web, f"/jobs/{job_id}")
    form = soup.select_one("#cancel").find_parent("form")  # type: ignore[union-attr]
    token = form.select_one("input[name=csrf]")  # type: ignore[union-attr]
    assert token is not None
    cross_site = web.post(
        f"/jobs/{job_id}/cancel", data={"csrf": str(token["value"])},
        headers={"Origin": "https://evil.example"},
    )  # fmt: skip
    assert cross_site.status_code == 403
    assert web.post(f"/jobs/{job_id}/cancel").status_code == 403  # no token at all
    assert client.get(job_id).status is JobStatus.PROCESSING
    answer = web.post(f"/jobs/{job_id}/cancel", data={"csrf": str(token["value"])})
    assert answer.status_code == 303
    assert client.get(job_id).status is JobStatus.CANCELLED
    after = page(web, answer.headers["location"])
    assert text(after.select_one("#job-status")) == "cancelled"
    assert f"job {job_id} cancelled" in text(after.select_one("#note"))


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("auth", [None, (USER, "wrong"), ("someone", PASSWORD)])
def test_every_route_and_action_needs_the_credentials(
    dashboard: str, method: str, path: str, auth: tuple[str, str] | None
) -> None:
    answer = httpx.request(method, dashboard + path.format(job="any-job"), auth=auth)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic realm=")
    assert "any-job" not in answer.text


def test_pages_carry_security_headers(web: httpx.Client) -> None:
    answer = web.get("/")
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["cache-control"] == "no-store"
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    soup = BeautifulSoup(answer.text, "html.parser")
    assert all(script.get("src") for script in soup.select("script"))  # no inline script
    assert not soup.select("[style]")  # nor inline styles (the CSP forbids them)


def test_no_auth_serves_without_credentials(settings: Settings, clean: None) -> None:
    with DashboardServer(settings, None, free_port()) as server:
        answer = httpx.get(server.url + "/")
        assert answer.status_code == 200
        # actions still need the page's token
        assert httpx.post(server.url + "/jobs/x/cancel", data={"csrf": "x"}).status_code == 403


# --- pure parts -------------------------------------------------------------------------------


def test_credentials_and_csrf_tokens() -> None:
    import base64

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert CREDENTIALS.match(basic(USER, PASSWORD))
    assert not CREDENTIALS.match(basic(USER, PASSWORD + "x"))
    assert not CREDENTIALS.match("Basic !!!") and not CREDENTIALS.match(None)
    assert not CREDENTIALS.match("Bearer " + PASSWORD)
    assert Credentials("a", "b:c").match(basic("a", "b:c"))
    from pollen.dashboard.security import csrf_key

    key = csrf_key(CREDENTIALS)
    assert key == csrf_key(Credentials(USER, PASSWORD))  # replicas agree
    assert key != csrf_key(Credentials(USER, "other"))
    assert csrf_ok(key, csrf_token(key)) and not csrf_ok(key, None)
    assert not csrf_ok(key, csrf_token(csrf_key(None)))
    assert parse_basic_auth("a:b:c") == ("a", "b:c")
    for bad in ("nocolon", ":pw", "user:"):
        with pytest.raises(ValueError, match="user:password"):
            parse_basic_auth(bad)


def test_durations_and_masked_secrets() -> None:
    assert present.span(0.25) == "250 ms"
    assert present.span(4.24) == "4.2 s"
    assert present.span(185) == "3 min 5 s"
    assert present.span(7800) == "2 h 10 min"
    assert present.span(3 * 86400 + 3600) == "3 d 1 h"
    record = {"apiKey": "k-123", "taskType": "x", "nested": [{"webhookSecret": "s", "n": 1}]}
    shown = present.masked(record)
    assert shown == {
        "apiKey": "********",
        "taskType": "x",
        "nested": [{"webhookSecret": "********", "n": 1}],
    }


# --- the command line ---------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("POLLEN_")}
    return subprocess.run(
        [sys.executable, "-m", "pollen.cli", "dashboard", *args],
        env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        ([], {}, 2, "the dashboard needs credentials: --basic-auth user:password"),
        (["--basic-auth", "nopassword"], {}, 2, "--basic-auth: give user:password"),
        (["--basic-auth", "a:b", "--no-auth"], {}, 2, "give --basic-auth or --no-auth, not both"),
        (["--port", "0", "--no-auth"], {}, 2, "Invalid value for '--port'"),
        (["--no-auth", "--host", "0.0.0.0"], {}, 2, "--no-auth serves only on a loopback"),
        ([], {"POLLEN_DASHBOARD__BASIC_AUTH": "x"}, 1, "POLLEN_DASHBOARD__BASIC_AUTH"),
        (["--no-auth"], {"POLLEN_REDIS_URL": "redis://127.0.0.1:9/0"}, 1, "is unreachable"),
    ],
)
def test_dashboard_command_mistakes_are_one_line(
    args: list[str], env: dict[str, str], code: int, says: str
) -> None:
    result = cli(env, *args)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert result.returncode == code


def test_dashboard_command_serves_with_the_credentials_from_the_environment(
    worker_env: dict[str, str],
) -> None:
    import os

    port = free_port()
    env = {**worker_env, "POLLEN_DASHBOARD__BASIC_AUTH": f"{USER}:{PASSWORD}"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POLLEN_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pollen.cli", "dashboard", "--port", str(port)],
        env={**clean, **env}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"

        def up() -> bool:
            try:
                return httpx.get(url).status_code == 401
            except httpx.TransportError:
                return False

        eventually(up, timeout=20, what="the dashboard to answer")
        assert httpx.get(url, auth=(USER, PASSWORD)).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"pollen dashboard on {url} (basic auth, user {USER})" in err
    assert PASSWORD not in err
