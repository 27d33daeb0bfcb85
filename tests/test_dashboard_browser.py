"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``; ``tasks/test``
installs it where apt-get can) driven by Playwright against the dashboard, the session's
worker and the simulator.

It filters the jobs table, opens a job with three video results and one failed generation,
replays a dead callback and sees the new attempt, and checks the page's own script ran under
the CSP (the live counts update) with no error in the console. With
``POLLEN_TEST_UPDATE_SCREENSHOTS=1`` it writes ``docs/dashboard-jobs.png``,
``docs/dashboard-job.png`` and ``docs/dashboard-overview.png`` (otherwise into the test's
temporary directory).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pollen import Pollen
from pollen.dashboard.security import Credentials
from pollen.local.servers import CallbackReceiver, DashboardServer, Worker, free_port
from pollen.settings import Settings
from tests.conftest import eventually
from tests.helpers import image_request, video_request

playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "ops", "browser-test"
#: without the background-networking flags Chromium keeps calling home (a closed network here)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "Debian's chromium is not installed and could not be (tasks/test runs "
            "`apt-get install -y chromium` where apt-get and root are available)"
        )
    return found


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return ROOT / "docs" if os.environ.get("POLLEN_TEST_UPDATE_SCREENSHOTS") else tmp_path


@pytest.fixture
def browser_page(settings: Settings, clean: None) -> Iterator[tuple[Any, str, list[str]]]:
    """A logged-in page of a fresh browser, the dashboard's URL, and the console's errors."""
    executable = chromium()
    credentials = Credentials(USER, PASSWORD)
    with (
        DashboardServer(settings, credentials, free_port()) as server,
        playwright.sync_playwright() as driver,
    ):
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(
            http_credentials={"username": USER, "password": PASSWORD},
            viewport={"width": 1400, "height": 900},
        )
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield page, server.url, errors
        finally:
            browser.close()


def image(prompt: str) -> dict[str, Any]:
    return image_request(prompt, output_format="PNG")  # real PNGs: the thumbnails render


def until(page: Any, predicate: str, timeout: float = 15) -> None:
    """Wait until the JavaScript ``predicate`` holds, polled from here: Playwright's own
    ``wait_for_function`` evaluates strings in the page, which the dashboard's CSP forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.1)


def job_ids(page: Any) -> list[str]:
    return [
        str(row.get_attribute("data-job")) for row in page.locator("#jobs-table tr[data-job]").all()
    ]


def test_filter_open_a_video_job_and_replay_a_dead_callback(
    worker: Worker,
    client: Pollen,
    receiver: CallbackReceiver,
    browser_page: tuple[Any, str, list[str]],
    shots: Path,
) -> None:
    page, url, errors = browser_page
    receiver.script("/down", *[(503, {}, 0.0)] * 4)  # then 200: the receiver is back
    images = [
        client.submit("runware", image(p), metadata={"team": team})
        for p, team in [
            ("a watercolor hummingbird", "ads"),
            ("a lighthouse at dusk", "ads"),
            ("a kite over dunes", "web"),
        ]
    ]
    videos = client.submit(
        "runware",
        {**video_request([0.4, 0.8, 1.2, 0.6], errors=[None, None, None, "timeoutProvider"]),
         "positivePrompt": "a red fox trotting through fresh snow, golden hour"},
        metadata={"team": "video"}, callback_url=f"{receiver.url}/ok",
        events=["partial", "completed"],
    )  # fmt: skip
    failed = client.submit(
        "runware",
        {**video_request([0.5], errors=["timeoutProvider"]), "positivePrompt": "a paper boat"},
    )
    dead = client.submit(
        "runware", image("a city in the rain"), callback_url=f"{receiver.url}/down",
        metadata={"team": "web"},
    )  # fmt: skip
    running = client.submit(
        "runware",
        {**video_request([120.0]), "positivePrompt": "a slow tide under the moon"},
        metadata={"team": "video"},
    )
    for job_id in [*images, videos, failed, dead]:
        client.wait(job_id, 60)
    eventually(lambda: [d["state"] for d in client.callbacks(dead)] == ["dead"], what="dead")

    # the jobs table: everything, then filtered by metadata, then by status as well
    page.goto(url + "/")
    assert set(job_ids(page)) == {*images, videos, failed, dead, running}
    until(page, "() => document.getElementById('live-counts').hasAttribute('data-updated')")
    # the page's own script ran (the CSP allows it) and read /api/counts
    assert page.locator('#live-counts [data-count="failed"]').inner_text() == "1"
    until(  # the thumbnails are the simulator's real PNGs, loaded
        page,
        "() => [...document.querySelectorAll('td.preview img')]"
        ".every(i => i.complete && i.naturalWidth === 64)",
    )
    assert page.locator("td.preview img").count() == 4
    page.screenshot(path=str(shots / "dashboard-jobs.png"))
    page.fill("#metadata", "team=ads")
    page.click("#apply")
    page.wait_for_url("**metadata=team*")
    assert sorted(job_ids(page)) == sorted(images[:2])
    page.fill("#metadata", "")
    page.check("input[name=status][value=failed]")
    page.click("#apply")
    page.wait_for_url("**status=failed*")
    assert job_ids(page) == [failed]
    assert "timeoutProvider" in page.locator(f'tr[data-job="{failed}"]').inner_text()
    page.click("text=clear")
    page.select_option("#order", "oldest")
    page.click("#apply")
    page.wait_for_url("**order=oldest*")
    assert job_ids(page)[0] == images[0]

    # a job with three videos and one failed generation
    page.click(f'a:text-is("{videos}")')
    page.wait_for_url(f"**/jobs/{videos}")
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.locator("#job-tenant").inner_text() == "default · priority 0"
    players = page.locator("#results video")
    assert players.count() == 3
    job = client.get(videos)
    assert [players.nth(i).get_attribute("src") for i in range(3)] == [r.url for r in job.results]
    failures = page.locator("#generation-errors tbody tr")
    assert failures.count() == 1 and "timeoutProvider" in failures.inner_text()
    steps = page.locator("#timeline li.done")
    assert [steps.nth(i).get_attribute("data-step") for i in range(steps.count())] == [
        "queued", "submitted", "processing", "succeeded",
    ]  # fmt: skip
    eventually(
        lambda: [d["state"] for d in client.callbacks(videos)] == ["delivered"] * 4,
        what="the video job's callbacks",
    )
    page.reload()
    assert page.locator("#deliveries tbody.delivery").count() == 4
    page.screenshot(path=str(shots / "dashboard-job.png"), full_page=True)

    # a dead callback, replayed from its job's page: the new attempt appears
    page.goto(f"{url}/jobs/{dead}")
    delivery = page.locator("#deliveries tbody.delivery")
    assert delivery.get_attribute("data-state") == "dead"
    assert delivery.locator("tr.attempt").count() == 4
    page.click("#replay")
    page.wait_for_url(lambda address: f"/jobs/{dead}?note=" in address)
    assert "replayed 1 callback deliveries" in page.locator("#note").inner_text()
    deadline = time.monotonic() + 20
    attempts = page.locator("#deliveries tr.attempt")
    # the state and the attempt are two writes: a page read between them shows 4 attempts
    while (
        page.locator("#deliveries tbody.delivery").get_attribute("data-state") != "delivered"
        or attempts.count() < 5
    ):
        assert time.monotonic() < deadline, "the replayed delivery did not arrive"
        time.sleep(0.3)
        page.reload()
    assert attempts.count() == 5
    last = attempts.nth(4).inner_text()
    assert "delivered" in last and "200" in last
    assert page.locator("#replay").count() == 0

    # the overview
    page.goto(f"{url}/overview")
    assert page.locator("#inflight").inner_text() == "1"
    assert page.locator("#finished-chart rect").count() >= 1
    assert page.locator('[data-last-hour="succeeded"]').inner_text() == "5"
    default = page.locator('#tenants tr[data-tenant="default"]')  # every job here names none
    assert default.locator('[data-col="finished"]').inner_text() == "6"
    assert default.locator('[data-col="running"]').inner_text() == "1"
    page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)
    client.cancel(running)
    assert errors == []
