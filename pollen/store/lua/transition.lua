-- Move a job forward to ARGV[1] (never back, never out of a terminal state): move() in prelude.
-- KEYS: job, events, inflight, results, order, responses, status_counts, by_age, stored
-- ARGV: status, now, finished_ttl_seconds, watch_at, field, value, ...
-- Returns 1 when moved, 0 when the job already was there or beyond, -1 when it is missing.
local k = {job = KEYS[1], events = KEYS[2], inflight = KEYS[3], results = KEYS[4],
  order = KEYS[5], responses = KEYS[6], counts = KEYS[7], by_age = KEYS[8], stored = KEYS[9]}
return move(k, ARGV[1], ARGV[2], ARGV[3], ARGV[4], {unpack(ARGV, 5)})
