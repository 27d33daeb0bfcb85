"""pollen on one machine: a local Redis (``redis-server`` or the embedded Valkey), worker and
callback-receiver child processes (:mod:`.servers`), and the end-to-end demo (:mod:`.demo`).
Used by ``pollen demo``, the tests and the benchmark; never by a deployed worker.
"""
