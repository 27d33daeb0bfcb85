"""The job store: the only package that talks to Redis.

:mod:`.jobs` (job state, results, events, parking), :mod:`.outbox` (callback deliveries),
:mod:`.keys` (every key name), :mod:`.durability` (the epoch marker that detects a store that
lost its data), :mod:`.stats` (counts for operators), :mod:`.connection` (the Redis client,
the store factory and probes), :mod:`.scripts` (loads the Lua scripts in ``lua/``). Nothing
outside this package holds a Redis client: it calls named methods of ``Store`` and ``Outbox``.
"""
