"""A callback host whose DNS never answers: each delivery attempt ends within its timeout, and
the callback is delivered once the name answers again within it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pollen import JobStatus, Pollen
from pollen.local.servers import CallbackReceiver, Worker
from tests.conftest import eventually
from tests.faults import dns
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, wait_all
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

#: the callback (and inline callback) timeout of the pod, seconds
TIMEOUT = 2.0
#: how much later than its timeout an attempt may end on a loaded machine, seconds
MARGIN = 1.0
#: how long the name server takes once it answers again: well inside the timeout
ANSWER_DELAY = 0.5
#: a name only the test's name server knows (.test is reserved: no real server has it)
HOST = "hooks.pollen.test"


class ResolvingWorker(Worker):
    """``pollen worker`` whose resolver is the test's name server (see :mod:`tests.faults.dns`)."""

    def __init__(self, resolv_conf: Path, env: dict[str, str], **options: Any) -> None:
        super().__init__(env, **options)
        self.resolv_conf = resolv_conf

    def _spawn(self, args: list[str]) -> None:
        super()._spawn(dns.resolving_through(self.resolv_conf, args))


def attempts(client: Pollen, job_id: str) -> list[dict[str, Any]]:
    return [a for d in client.callbacks(job_id) for a in d["attempts"]]


def test_a_callback_host_whose_dns_never_answers_ends_each_attempt_within_its_timeout(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    receiver: CallbackReceiver,
    tmp_path: Path,
) -> None:
    case.case, case.fault = "21", "The callback host's name server never answers"
    case.proves = (
        "each delivery attempt ends within the callback timeout (a retry naming the DNS "
        "lookup), and the callback is delivered once the name answers within it"
    )
    why_not = dns.unavailable()
    if why_not:
        pytest.skip(why_not)
    with dns.FakeDNS() as server:
        fleet = make_fleet(
            POLLEN_CALLBACKS__TIMEOUT=f"{TIMEOUT:g}",
            POLLEN_INLINE_CALLBACK_TIMEOUT=f"{TIMEOUT:g}",
            POLLEN_CALLBACKS__SCHEDULE="[0, 0.5, 1, 1, 1, 1, 1, 1]",
        )
        log = fleet.logdir / "pod.log"
        worker = ResolvingWorker(
            server.resolv_conf(tmp_path), {**fleet.env, "POLLEN_HEARTBEAT_FILE": str(log) + ".hb"},
            name=f"pod-{fleet.suffix}", concurrency=2, pool="prefork", log_file=str(log),
        )  # fmt: skip
        worker.start()
        fleet.workers["pod"] = worker  # killed and its log printed at the end
        fleet.wait_ready("pod")
        client = fleet.client()
        job_id = client.submit(
            "runware", video_request([0.3]), callback_url=f"http://{HOST}:{receiver.port}/dns"
        )
        [job] = wait_all(client, [job_id], timeout=30)
        assert job.status is JobStatus.SUCCEEDED
        silent = eventually(
            lambda: attempts(client, job_id)[:2] if len(attempts(client, job_id)) >= 2 else None,
            timeout=30, what="two attempts while the name server is silent",
        )  # fmt: skip
        assert server.queries >= 2  # the worker did ask the test's name server
        server.delay = ANSWER_DELAY
        answering_at = time.time()
        [post] = eventually(lambda: receiver.received("/dns"), timeout=30, what="the delivery")
        delivered_after = post["received_at"] - answering_at
        time.sleep(1.0)  # no second delivery comes
        assert len(receiver.received("/dns")) == 1
        final = attempts(client, job_id)
    for attempt in silent:
        assert attempt["outcome"] == "retry"
        assert attempt["error"] == f"DNS lookup of {HOST} did not answer within {TIMEOUT:g}s"
        assert TIMEOUT * 1000 <= attempt["latency_ms"] < (TIMEOUT + MARGIN) * 1000
    last = final[-1]
    assert last["outcome"] == "delivered"
    assert ANSWER_DELAY * 1000 <= last["latency_ms"] < TIMEOUT * 1000  # the lookup was waited for
    longest = max(a["latency_ms"] for a in silent) / 1000
    case.recovery_s = round(longest, 2)
    case.how = (
        f"A name server of the test's own on a loopback port 53 that reads every query and "
        f"never answers; the pod runs in a mount namespace of its own whose /etc/resolv.conf "
        f"names it (`{dns.RESOLV_OPTIONS}`: glibc alone would wait 30 s). Callback timeout "
        f"{TIMEOUT:g} s. Then the server answers each query after {ANSWER_DELAY:g} s. "
        "Recovery: the longest attempt while the server was silent."
    )
    case.notes.append(
        f"Attempts while silent: {len(silent)} shown, each "
        + ", ".join(f"{a['latency_ms'] / 1000:.2f} s" for a in silent)
        + f"; delivered {delivered_after:.1f} s after the server answered again "
        f"(the attempt took {last['latency_ms'] / 1000:.2f} s with a {ANSWER_DELAY:g} s lookup)."
    )
    tally(client, [job_id], receiver=receiver).fill(case)
    client.close()
