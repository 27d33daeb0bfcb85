"""Every Redis key pollen writes, in one place. State is keyed by job id."""

from __future__ import annotations

PREFIX = "pollen"

#: sorted set of job ids not yet terminal, scored by when their next step is overdue
INFLIGHT = f"{PREFIX}:inflight"
#: sorted set of job ids not yet terminal, scored by creation time (oldest first)
BY_AGE = f"{PREFIX}:inflight:created"
#: hash: status -> number of jobs in it (in-flight states go up and down; terminal only up)
STATUS_COUNTS = f"{PREFIX}:stats:status"
#: sorted set of callback deliveries that exhausted their schedule, scored by time
DEAD = f"{PREFIX}:callbacks:dead"
#: sorted set of unfinished callback deliveries, scored by when each must be tried (again)
DUE = f"{PREFIX}:callbacks:due"
#: set of callback URLs that answered 410 Gone: never called again
GONE = f"{PREFIX}:callbacks:gone"
#: string "<uuid> <unix time>": written once into an empty store; if it vanishes or changes,
#: Redis lost its data (restarted without persistence, flushed, failed over to an empty replica)
EPOCH = f"{PREFIX}:store:epoch"
#: hash: when data loss was detected and which epoch was lost
DATA_LOSS = f"{PREFIX}:store:data_loss"
#: sorted set "job_id|attempt" -> due time: long poll waits kept here instead of in a worker
PARKED_POLLS = f"{PREFIX}:polls:parked"
#: sorted set job_id -> due time: submit retries due later than ``park_after``, kept here
#: instead of as countdown messages in a worker (the periodic round sends them)
PARKED_SUBMITS = f"{PREFIX}:submits:parked"
#: how long a wake mark (:func:`submit_wake`) lasts without a take, milliseconds
WAKE_MS = 1000
#: sorted set of cancelled jobs whose follow-up (the provider's cancel call, the completion
#: callback) is not done yet, scored by when the reconciler sends it again
CANCELS = f"{PREFIX}:cancels"
#: the listing indexes: ``INDEX_PREFIX + "<provider>:<status>"`` is a sorted set of the job ids
#: of one provider in one status, scored by creation time (kept by the store's scripts)
INDEX_PREFIX = f"{PREFIX}:index:"
#: sorted set "<provider>|<status>|<job id>" -> when that finished job's record expires: the
#: periodic round removes expired jobs from the listing indexes
INDEX_EXPIRY = f"{PREFIX}:index:expiry"
#: sorted set "<job id>|<generation id>" -> when that result's copy (re-hosting) must be tried
#: (again); the periodic round sends the due ones
COPIES_DUE = f"{PREFIX}:copies:due"
#: sorted set "<job id>|<generation id>" -> until when a worker holds that copy (its lease)
COPIES_RUNNING = f"{PREFIX}:copies:running"
#: ``FINISHED_PREFIX + "<unix minute>"`` is a hash: terminal status -> jobs that reached it in
#: that minute (the dashboard's finished-per-minute chart); each expires after FINISHED_TTL
FINISHED_PREFIX = f"{PREFIX}:stats:finished:"
FINISHED_TTL = 2 * 3600
#: seconds a job's keys outlive its deadline plus the finished-job TTL, and a callback
#: delivery's record the finished-job TTL: the one slack for every key pollen expires
EXTRA_TTL = 3600
#: admission (fair queueing for capped provider accounts): ``ADMIT_PREFIX + "<provider>:..."``
#: holds one provider's queue and slots (:mod:`pollen.store.admission` names each key)
ADMIT_PREFIX = f"{PREFIX}:admit:"
#: how long one admission by a worker that knows a provider's cap marks its queue as tended
#: (``keys.admit(provider, "capped")``); an untended queue is sent without a cap
CAPPED_MARK_SECONDS = 30
#: hash "<tenant>|<status>" -> jobs of that tenant in that status (in-flight ones go up and
#: down, terminal ones only up), "<tenant>|cost" -> the provider cost of its finished jobs
TENANT_STATS = f"{PREFIX}:stats:tenant"
#: list of the latest refused ``pollen.submit`` payloads (JSON, newest first, capped at
#: REJECTED_KEEP), expiring with the finished-job TTL after the last one
REJECTED = f"{PREFIX}:rejected"
REJECTED_KEEP = 1000
#: sorted set of worker instances holding submit messages, scored by when each one's lease on
#: them lapses (renewed while the worker lives; see :mod:`pollen.store.claims`)
HOLDERS = f"{PREFIX}:claims:holders"
#: hash tag -> time: submit messages a dead worker held and the reconciler sent again (so
#: the scan of the broker's deliveries does not send them a second time); expires
RESENT = f"{PREFIX}:claims:resent"
RESENT_TTL = 3600
#: string, expiring: the submit queue held messages when a reconciler round last looked (a
#: message taken from it just now may not be claimed yet: overdue queued jobs wait a little)
SUBMIT_BACKLOG = f"{PREFIX}:claims:backlog"
#: string: the delivery time up to which the broker's unacked messages were looked at for
#: unclaimed submits (:mod:`pollen.store.orphans`)
ORPHAN_SCAN = f"{PREFIX}:claims:scanned"


def ready_submits(queue: str) -> str:
    """Sorted set job_id -> created at: jobs ``Pollen.submit`` stored for the submit queue
    ``queue`` whose submit has not been sent yet; the next wake message on that queue takes
    them (group commit)."""
    return f"{PREFIX}:submits:ready:{queue}"


def submit_wake(queue: str) -> str:
    """String, expiring after WAKE_MS: a wake message for ``queue``'s ready jobs is on its way
    (the first create that finds it absent sets it and sends one; the take that empties the
    ready set clears it)."""
    return f"{PREFIX}:submits:wake:{queue}"


def held(holder: str) -> str:
    """Hash: delivery tag -> the submit message a worker instance holds (JSON)."""
    return f"{PREFIX}:claims:held:{holder}"


#: lock keys of periodic work, so one worker does each round
RECONCILE_LOCK = f"{PREFIX}:lock:reconcile"
TICK_LOCK = f"{PREFIX}:lock:tick"
SWEEP_LOCK = f"{PREFIX}:lock:sweep"


def job(job_id: str) -> str:
    """Hash: the job record (status, provider, timestamps, counters, request, policy)."""
    return f"{PREFIX}:job:{job_id}"


def results(job_id: str) -> str:
    """Hash: generation id -> normalised result JSON (one field per finished generation)."""
    return f"{PREFIX}:job:{job_id}:results"


def result_order(job_id: str) -> str:
    """List: generation ids in the order pollen first saw them finish."""
    return f"{PREFIX}:job:{job_id}:order"


def stored(job_id: str) -> str:
    """Hash: generation id -> pollen's copy of its file (``StoredCopy`` JSON, re-hosting);
    merged into the results when the job is read."""
    return f"{PREFIX}:job:{job_id}:stored"


def responses(job_id: str) -> str:
    """List: the provider response envelopes that said something new, oldest first (audit;
    an answer that repeats the last one is counted in ``polls``, not kept)."""
    return f"{PREFIX}:job:{job_id}:responses"


def events(job_id: str) -> str:
    """Pub/Sub channel (no key is stored): the job's lifecycle events (status changes,
    partial results, completion), what ``Pollen.wait`` listens to."""
    return f"{PREFIX}:job:{job_id}:events"


def pushes(job_id: str) -> str:
    """List: the provider pushes the ingress took for the job (JSON: when, body), the last
    few, oldest first (audit only: a push is never the result)."""
    return f"{PREFIX}:job:{job_id}:pushes"


def job_deliveries(job_id: str) -> str:
    """List: the job's callback delivery ids, in the order the events happened."""
    return f"{PREFIX}:job:{job_id}:deliveries"


def delivery_attempts(job_id: str) -> str:
    """List: every callback delivery attempt of the job (JSON), oldest first."""
    return f"{PREFIX}:job:{job_id}:attempts"


def delivery(delivery_id: str) -> str:
    """Hash: one callback delivery (event body, target, state, attempts, next try)."""
    return f"{PREFIX}:delivery:{delivery_id}"


def rate_window(provider: str) -> str:
    """Sorted set: the provider requests of the last second (shared rate limit)."""
    return f"{PREFIX}:rate:{provider}"


def index(provider: str, status: str) -> str:
    """Sorted set: the ids of one provider's jobs in one status, by creation time."""
    return f"{INDEX_PREFIX}{provider}:{status}"


def finished(minute: int) -> str:
    """Hash: terminal status -> jobs that reached it during ``minute`` (unix time // 60)."""
    return f"{FINISHED_PREFIX}{minute}"


def admit(provider: str, part: str) -> str:
    """One key of a provider's admission state (see :mod:`pollen.store.admission`)."""
    return f"{ADMIT_PREFIX}{provider}:{part}"


def slots(provider: str, account: str) -> str:
    """Sorted set: the jobs holding a slot of one provider account, by when they took it."""
    return admit(provider, f"slots:{account}")


def rejected(job_id: str) -> str:
    """String: the refusal (JSON) of a ``pollen.submit`` payload that named this job id and
    was refused; it expires with the finished-job TTL (no job record is written)."""
    return f"{PREFIX}:rejected:{job_id}"
