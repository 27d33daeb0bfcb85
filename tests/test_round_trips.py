"""Redis round trips and commands of one job's whole life, step by step, asserted exactly: a
change that adds one fails here, naming the step and both numbers, instead of showing up as a
benchmark figure nobody reads.

The life: ``Pollen.submit`` (the producer) -> the wake that takes the ready job -> the
worker's submit step -> a poll whose answer
is "still running" -> a poll whose answer is "done" (the completion recorded, its webhook in
the outbox) -> the delivery of that webhook. The steps are pollen's plain functions, run in
this process with what :mod:`pollen.worker.tasks` does around them (:class:`Tasks`: its Redis
calls made, its Celery messages recorded instead of sent), against a Redis of this test's own,
the provider simulator over HTTP and a real callback receiver.

Counted on the wire (a connection class installed in this test only), per step:

- round trips: one per command outside a pipeline, per pipeline execute, per script call;
- commands: what those carry (a pipeline of 5 is 5, a script call is 1);
- script commands: the commands the scripts ran inside Redis (its ``INFO commandstats``
  before and after, less what the clients sent: exact, since nothing else uses this Redis);
- messages: the Celery messages the step sends.

Connection set-up and health checks are not counted. A first job warms the clients up (scripts
loaded, the producer's epoch read), so the counts are those of every job after it.
``pytest -s`` prints the table and what each round trip is for (docs/benchmarks.md keeps it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
import redis

from pollen import Pollen, contract
from pollen.backoff import PollPolicy
from pollen.local.servers import CallbackReceiver, RedisServer
from pollen.producer import Send
from pollen.settings import Settings
from pollen.simulator import SimulatorServer
from pollen.store import keys
from pollen.store.claims import Held
from pollen.worker import admission, batch, planner, submits
from pollen.worker.batch import BatchNext
from pollen.worker.deliveries import DeliveryOutcome, deliver
from pollen.worker.grouping import Due
from pollen.worker.runtime import Deps, build_deps
from tests.conftest import eventually, settings_from
from tests.helpers import video_request

pytestmark = pytest.mark.integration
T = TypeVar("T")

#: seconds the simulator takes to finish the job (the first poll comes well before)
DURATION = 1.0
#: container commands: Redis counts ``SCRIPT EXISTS`` as ``script|exists``
CONTAINERS = frozenset({b"script", b"client", b"config", b"object", b"memory", b"command"})


@dataclass(frozen=True)
class Count:
    """What one step cost."""

    trips: int  #: Redis round trips
    commands: int  #: commands the clients sent
    in_scripts: int  #: commands the scripts ran inside Redis
    messages: int  #: Celery messages sent


#: what each field is called in a failure and in the table
LABELS = {
    "trips": "round trips",
    "commands": "commands",
    "in_scripts": "commands in scripts",
    "messages": "messages",
}

#: step -> what it costs, and why
EXPECTED: dict[str, tuple[Count, str]] = {
    "submit": (
        Count(trips=1, commands=1, in_scripts=12, messages=1),
        "create_job stores the job with its indexes and makes it ready; one pollen.submit wake "
        "(none while a wake is on its way: test_a_burst_of_submits_shares_one_wake)",
    ),
    "wake": (
        Count(trips=1, commands=1, in_scripts=5, messages=0),
        "take_ready takes every ready job, watches it while in hand, clears the wake mark and "
        "rewrites the wake's claim to name them; their submit is the next step, same task",
    ),
    "worker submit": (
        Count(trips=3, commands=3, in_scripts=13, messages=1),
        "read the job, begin_submit counts the attempt, transition records the provider's "
        "answer; the first poll's message",
    ),
    "poll: running": (
        Count(trips=2, commands=2, in_scripts=17, messages=1),
        "claim_polls takes the lease, record_polls keeps the answer; the poll's own retry",
    ),
    "poll: done": (
        Count(trips=3, commands=3, in_scripts=42, messages=0),
        "claim_polls, record_polls ends the job, create_delivery puts the webhook in the outbox",
    ),
    "delivery": (
        Count(trips=2, commands=2, in_scripts=12, messages=0),
        "claim_delivery reads what the attempt needs, record_delivery records its outcome",
    ),
}


def unpack(packed: bytes) -> list[list[bytes]]:
    """The commands in a buffer a client sent (RESP arrays of bulk strings), each as its
    arguments."""
    found: list[list[bytes]] = []
    at = 0
    while at < len(packed):
        end = packed.index(b"\r\n", at)
        args: list[bytes] = []
        for _ in range(int(packed[at + 1 : end])):
            start = packed.index(b"\r\n", end + 2)
            size = int(packed[end + 3 : start])
            args.append(packed[start + 2 : start + 2 + size])
            end = start + size + 2
        found.append(args)
        at = end + 2
    return found


def command_name(args: Sequence[bytes]) -> str:
    """A command's name as ``INFO commandstats`` spells it (``evalsha``, ``script|exists``)."""
    name = args[0].lower()
    if name in CONTAINERS and len(args) > 1:
        name += b"|" + args[1].lower()
    return name.decode()


class Wire:
    """What the clients whose pools it is installed in sent: one entry per round trip (its
    commands), and apart from them what opening and checking connections sent."""

    def __init__(self) -> None:
        self.trips: list[list[list[bytes]]] = []
        self.overhead: list[list[bytes]] = []

    def install(self, client: redis.Redis) -> None:
        """Count ``client``'s traffic from its next connection on (no health-check pings)."""
        pool = client.connection_pool
        pool.disconnect()
        pool.connection_class = self.connection_class()
        pool.connection_kwargs["health_check_interval"] = 0

    def connection_class(self) -> type[redis.Connection]:
        wire = self

        class Counted(redis.Connection):
            depth = 0  #: connects and sends under way (what is sent inside one: set-up)

            def connect(self) -> None:
                self.depth += 1
                try:
                    super().connect()  # type: ignore[no-untyped-call]
                finally:
                    self.depth -= 1

            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                chunks = [command] if isinstance(command, bytes) else command
                sent = unpack(b"".join(bytes(chunk) for chunk in chunks))
                if self.depth:
                    wire.overhead += sent
                else:
                    wire.trips.append(sent)
                self.depth += 1
                try:
                    super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]
                finally:
                    self.depth -= 1

        return Counted

    def take(self) -> tuple[list[list[list[bytes]]], list[list[bytes]]]:
        trips, overhead = list(self.trips), list(self.overhead)
        self.trips.clear()
        self.overhead.clear()
        return trips, overhead


def server_calls(admin: redis.Redis) -> Counter[str]:
    """Commands the server ran so far, by name (its own ``INFO`` calls left out)."""
    stats = admin.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()})
    del calls["info"]
    return calls


@dataclass
class Row:
    step: str
    count: Count
    trips: list[str]  #: what each round trip carried
    messages: list[str]  #: the Celery messages sent, by task name
    scripts_ran: Counter[str]  #: the commands the scripts ran, by name


@dataclass
class Meter:
    """Measures steps: the wire's round trips and commands, the server's counts, the
    messages recorded."""

    wire: Wire
    admin: redis.Redis
    scripts: dict[str, str]  #: sha -> script name
    sent: list[tuple[str, Any]]
    rows: list[Row] = field(default_factory=list)

    def step(self, name: str, action: Callable[[], T]) -> T:
        self.wire.take()
        before, messages = server_calls(self.admin), len(self.sent)
        result = action()
        ran = server_calls(self.admin) - before
        trips, overhead = self.wire.take()
        sent = Counter(command_name(c) for trip in trips for c in trip)
        sent.update(command_name(c) for c in overhead)
        inside = ran - sent  # what the clients did not send themselves
        count = Count(
            trips=len(trips),
            commands=sum(len(trip) for trip in trips),
            in_scripts=sum(inside.values()),
            messages=len(self.sent) - messages,
        )
        described = [self.describe(trip) for trip in trips]
        names = [task for task, _ in self.sent[messages:]]
        self.rows.append(Row(name, count, described, names, inside))
        return result

    def describe(self, trip: list[list[bytes]]) -> str:
        names = [self.label(command) for command in trip]
        return names[0] if len(names) == 1 else f"pipeline({', '.join(names)})"

    def label(self, args: list[bytes]) -> str:
        name = command_name(args)
        if name == "evalsha":
            return f"script {self.scripts.get(args[1].decode(), '?')}"
        return name.replace("|", " ").upper()


class RecordingPollen(Pollen):
    """The producer client, its Celery messages recorded instead of sent."""

    def __init__(self, settings: Settings, sent: list[tuple[str, Any]]) -> None:
        super().__init__(settings)
        self.sent = sent

    def _send(self, message: Send) -> None:
        self.sent.append((message.name, message.kwargs))


@dataclass
class Tasks:
    """What :mod:`pollen.worker.tasks` does around each step, Redis calls included; the Celery
    messages it would send are recorded as (task name, what the message carries)."""

    deps: Deps
    sent: list[tuple[str, Any]]

    def wake(self) -> list[str]:
        """``tasks._wake`` on a Redis broker: the ready jobs taken, the wake message's claim
        rewritten to name them (their submit runs in the same task: the next step)."""
        claim = ("round-trips", Held("wake-1", {"wake": True}, claimed_at=self.deps.clock()))
        expect_by = self.deps.clock() + 60
        queue = self.deps.settings.queues.submit
        job_ids, _ = self.deps.store.schedule.take_ready(
            queue, contract.SUBMIT_BATCH_JOBS, expect_by, claim
        )
        return job_ids

    def submitted(self, outcome: submits.SubmitNext) -> None:
        """``tasks._submitted``: the first poll sent or parked, the deliveries queued."""
        plan = self._plan(outcome.polls, outcome.deliveries, first=True)
        self._queue(plan.queue)
        self._carry_out(plan)

    def polled(self, outcome: BatchNext) -> planner.Plan:
        """``tasks.poll`` but for its deliveries: the next polls, the copies to make, the
        waiting jobs admitted to freed slots, its own retry."""
        plan = self._plan(outcome.polls, outcome.deliveries)
        self._carry_out(plan)
        self.sent += [(contract.COPY_RESULT, copy) for copy in outcome.copies]
        if outcome.finished:
            admission.pump(self.deps, outcome.providers, self._submits, now=self.deps.clock())
        if plan.retry is not None:
            self.sent.append((contract.POLL, plan.retry.items))
        return plan

    def deliver(self, plan: planner.Plan) -> list[DeliveryOutcome]:
        """``tasks._deliver``: the queued deliveries sent, the inline ones attempted here."""
        self._queue(plan.queue)
        outcomes = []
        for ident in plan.inline:
            outcome = deliver(self.deps, ident, self._send_task, timeout=plan.inline_timeout)
            if outcome.retry_in is not None:
                self._queue([ident])
            outcomes.append(outcome)
        return outcomes

    def _plan(self, polls: list[Due], deliveries: list[str], first: bool = False) -> planner.Plan:
        limits = planner.Limits.of(self.deps.settings)
        return planner.plan(polls, deliveries, now=self.deps.clock(), limits=limits, first=first)

    def _carry_out(self, plan: planner.Plan) -> None:
        self.sent += [(contract.POLL, message.items) for message in plan.send]
        self.deps.store.schedule.park(plan.park)

    def _queue(self, deliveries: Sequence[str]) -> None:
        self.sent += [(contract.DELIVER_CALLBACK, ident) for ident in deliveries]

    def _submits(self, job_ids: list[str]) -> None:
        self.sent.append((contract.SUBMIT, job_ids))

    def _send_task(self, name: str, kwargs: dict[str, Any], queue: str | None) -> None:
        self.sent.append((name, kwargs))


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis no other test or worker uses: its command counts are this test's alone."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def meter(
    worker_env: dict[str, str], own_redis: RedisServer
) -> Iterator[tuple[Meter, RecordingPollen, Tasks]]:
    settings = settings_from({**worker_env, "POLLEN_REDIS_URL": own_redis.url(0)})
    sent: list[tuple[str, Any]] = []
    wire = Wire()
    deps = build_deps(settings)
    producer = RecordingPollen(settings, sent)
    for client in (producer.store.redis, deps.store.redis):
        wire.install(client)
    admin = redis.Redis(port=own_redis.port)
    scripts = {s.sha: name for name, s in {**deps.store.scripts, **deps.outbox.scripts}.items()}
    yield Meter(wire, admin, scripts, sent), producer, Tasks(deps, sent)
    admin.close()
    producer.close()
    deps.calls.close()
    deps.http.close()
    deps.store.close()


def _finished_at_simulator(simulator: SimulatorServer, task_id: str) -> bool:
    view = httpx.get(f"{simulator.url}/_sim/tasks/{task_id}").json()
    return bool(view["status"] == "success")


def life(
    meter: Meter,
    producer: Pollen,
    tasks: Tasks,
    simulator: SimulatorServer,
    callback_url: str,
) -> list[DeliveryOutcome]:
    """One job from its submit to its completion webhook, each step measured; the delivery's
    outcomes."""
    deps = tasks.deps
    request = video_request([DURATION])
    job_id = meter.step(
        "submit", lambda: producer.submit("runware", request, callback_url=callback_url)
    )
    assert meter.step("wake", tasks.wake) == [job_id]
    meter.step("worker submit", lambda: tasks.submitted(submits.submit_batch(deps, [job_id])))

    def poll(attempt: int) -> tuple[BatchNext, planner.Plan]:
        outcome = batch.poll_batch(deps, [(job_id, attempt)])
        return outcome, tasks.polled(outcome)

    running, plan = meter.step("poll: running", lambda: poll(1))
    assert running.finished == [], "the job ended at its first poll: a slow machine?"
    assert plan.retry is not None
    [(_, attempt)] = plan.retry.items
    task_id = deps.store.lifecycle.get(job_id).provider_task_id
    assert task_id is not None
    eventually(lambda: _finished_at_simulator(simulator, task_id), what="the task to finish")
    done, plan = meter.step("poll: done", lambda: poll(attempt))
    assert done.finished == [job_id] and len(plan.inline) == 1, (done, plan)
    return meter.step("delivery", lambda: tasks.deliver(plan))


def _table(rows: Sequence[Row]) -> str:
    """The counts as a Markdown table, with the whole job's in the last row."""

    def line(*cells: object) -> str:
        return "| " + " | ".join(str(cell) for cell in cells) + " |"

    lines = [line("step", *LABELS.values()), line(*["---"] * (len(LABELS) + 1))]
    lines += [line(row.step, *(getattr(row.count, f) for f in LABELS)) for row in rows]
    lines.append(line("**one job**", *(sum(getattr(r.count, f) for r in rows) for f in LABELS)))
    return "\n".join(lines)


def _details(rows: Sequence[Row]) -> str:
    lines = []
    for row in rows:
        lines.append(f"{row.step}:")
        lines += [f"  {n}. {trip}" for n, trip in enumerate(row.trips, start=1)]
        ran = ", ".join(f"{name} {n}" for name, n in sorted(row.scripts_ran.items()))
        lines.append(f"  inside scripts: {ran or 'nothing'}")
        lines.append(f"  messages: {', '.join(row.messages) or 'none'}")
    return "\n".join(lines)


def test_one_jobs_life(
    meter: tuple[Meter, RecordingPollen, Tasks],
    simulator: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    measure, producer, tasks = meter
    url = f"{receiver.url}/done"
    life(measure, producer, tasks, simulator, url)  # loads the scripts, reads the epoch
    measure.rows.clear()
    outcomes = life(measure, producer, tasks, simulator, url)
    assert [o.state for o in outcomes] == ["delivered"]
    assert len(receiver.received("/done")) == 2
    print("\n" + _table(measure.rows) + "\n\n" + _details(measure.rows))
    wrong = [
        f"{row.step}: {LABELS[what]} {getattr(row.count, what)}, expected "
        f"{getattr(want, what)} ({why})"
        for row in measure.rows
        for want, why in [EXPECTED[row.step]]
        for what in LABELS
        if getattr(row.count, what) != getattr(want, what)
    ]
    assert [row.step for row in measure.rows] == list(EXPECTED)
    assert wrong == [], "\n".join(wrong)


def test_a_burst_of_submits_shares_one_wake(
    meter: tuple[Meter, RecordingPollen, Tasks],
) -> None:
    """Jobs stored while a wake is on its way send no message of their own; the wake takes
    them all in one round trip, its claim naming them (a worker that dies with them in hand
    leaves them to the reconciler). A job stored after that take sends the next wake."""
    _, producer, tasks = meter
    sent = producer.sent
    tasks.wake()  # whatever an earlier test left ready
    producer.store.redis.delete(keys.submit_wake(producer.settings.queues.submit))
    before = len(sent)
    burst = [producer.submit("runware", video_request([30.0])) for _ in range(20)]
    assert [name for name, _ in sent[before:]] == [contract.SUBMIT]
    assert sent[before][1] == {"wake": True}
    assert tasks.wake() == burst  # oldest first
    claim = producer.store.redis.hget("pollen:claims:held:round-trips", "wake-1:0")
    assert claim is not None and json.loads(claim)["kwargs"] == {"job_ids": burst}
    assert tasks.wake() == []  # nothing left, and the wake mark is gone:
    later = producer.submit("runware", video_request([30.0]))
    assert sent[-1] == (contract.SUBMIT, {"wake": True})
    assert tasks.wake() == [later]


def test_the_meter_counts_what_goes_over_the_wire(own_redis: RedisServer) -> None:
    """A pipeline is one round trip of its commands, a script call one of one command whose
    own commands Redis counts; opening a connection (SELECT here) is not counted."""
    wire = Wire()
    client = redis.Redis(port=own_redis.port, db=3)
    wire.install(client)
    admin = redis.Redis(port=own_redis.port)
    body = "redis.call('set', KEYS[1], 1) return redis.call('incr', KEYS[1])"
    script = client.register_script(body)
    admin.script_load(body)
    meter = Meter(wire, admin, {script.sha: "two"}, sent=[])

    def work() -> None:
        client.get("x")
        pipe = client.pipeline(transaction=False)
        pipe.set("a", 1)
        pipe.incr("a")
        pipe.get("a")
        assert pipe.execute() == [True, 2, b"2"]
        assert script(keys=["k"]) == 2

    meter.step("work", work)
    [row] = meter.rows
    assert row.count == Count(trips=3, commands=5, in_scripts=2, messages=0)
    assert row.trips == ["GET", "pipeline(SET, INCRBY, GET)", "script two"]
    assert row.scripts_ran == Counter({"set": 1, "incr": 1})
    client.close()
    admin.close()


#: bytes of field names and values in the record of the job in
#: :func:`test_a_polling_jobs_record_keeps_no_copies` (1,177 when written; 1,437 when a job's
#: hash also kept the provider's last answer, empty optional fields and every policy field):
#: Redis memory per job in flight is mostly this hash
RECORD_BUDGET = 1_200


def test_a_polling_jobs_record_keeps_no_copies(
    meter: tuple[Meter, RecordingPollen, Tasks], simulator: SimulatorServer
) -> None:
    """A job in flight holds no empty optional field, no copy of the poll policy's defaults and
    no copy of the provider's last answer (the audit list keeps each answer that said
    something new); the job and its audit read back whole."""
    _, producer, tasks = meter
    deps = tasks.deps
    job_id = producer.submit("runware", video_request([30.0]), callback_url="https://example.com/h")
    tasks.submitted(submits.submit_batch(deps, [job_id]))
    for attempt in (1, 2):  # a first answer (kept: it says "processing") and a repeat of it
        outcome = batch.poll_batch(deps, [(job_id, attempt)])
        assert outcome.finished == []
        tasks.polled(outcome)
    record = {k: v for k, v in deps.store.redis.hgetall(f"pollen:job:{job_id}").items()}
    empty = sorted(k for k, v in record.items() if v in ("", "{}", "[]") and k != "policy")
    assert empty == ["errors"], empty  # errors: the generation errors, written by each answer
    policy = deps.settings.poll.model_dump()  # the tests' fast polls: some fields not default
    changed = {k: v for k, v in policy.items() if v != PollPolicy.model_fields[k].default}
    assert json.loads(record["policy"]) == changed and len(changed) < len(policy)
    assert "last_response" not in record
    size = sum(len(k) + len(v) for k, v in record.items())
    assert size <= RECORD_BUDGET, sorted(record.items(), key=lambda kv: -len(kv[1]))[:5]
    job = deps.store.lifecycle.get(job_id)
    assert job.policy == deps.settings.poll and job.polls == 2 and job.metadata == {}
    assert job.callback_url == "https://example.com/h" and job.python_callback is None
    details = producer.task_details(job_id)
    assert details["response"]["data"][0]["status"] == "processing", details
