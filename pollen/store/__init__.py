"""The job store: the only package that talks to Redis.

One module per idea: :mod:`.lifecycle` (create, move forward, cancel, read a job),
:mod:`.polls` (poll fencing and leases), :mod:`.schedule` (parked polls, the reconciler's
watch list, index trimming), :mod:`.pushes` (provider pushes), :mod:`.listing` (pages of
jobs), :mod:`.outbox` (callback deliveries), :mod:`.copies`
(re-hosted files), :mod:`.rates` (provider rate tokens), :mod:`.locks` (periodic locks),
:mod:`.durability` (the epoch marker that detects a store that lost its data),
:mod:`.replication` (a create waits for a replica), :mod:`.stats`
(counts for operators). Underneath: :mod:`.effects` (operations as generators, run by
either client: the one way a script is called), :mod:`.decode` (a stored job as a ``Job``),
:mod:`.keys` (every key name), :mod:`.scripts` (loads the Lua scripts in ``lua/``),
:mod:`.sync` and :mod:`.aio` (the client and its scripts, sync and asyncio),
:mod:`.connection` (building clients, probes). Nothing outside this package holds a Redis
client: it calls the store's ideas (``store.lifecycle``, ``store.polls``...) or runs their
operations.
"""
