-- Cancel a job: move it to `cancelled` (move() in prelude: never out of a terminal state, so
-- a cancel racing the poll that finishes the job leaves exactly one terminal status) and put
-- it on the follow-up list (a worker makes the provider's cancel call and sends the
-- `completed` callback; the reconciler re-sends that step if it is lost).
-- KEYS: job, events, inflight, results, order, responses, status_counts, by_age, cancels,
--   stored
-- ARGV: now, finished_ttl_seconds, follow_up_at, reason
-- Returns {1, 'cancelled'} when cancelled now, {0, status} when the job had already ended,
-- {-1, ''} when it is missing.
local k = {job = KEYS[1], events = KEYS[2], inflight = KEYS[3], results = KEYS[4],
  order = KEYS[5], responses = KEYS[6], counts = KEYS[7], by_age = KEYS[8], stored = KEYS[10]}
local fields = {'error_code', 'cancelled', 'error_message', ARGV[4], 'cancel_state', 'pending'}
local moved = move(k, 'cancelled', ARGV[1], ARGV[2], '', fields)
if moved == -1 then return {-1, ''} end
if moved == 0 then return {0, redis.call('HGET', k.job, 'status')} end
redis.call('ZADD', KEYS[9], ARGV[3], redis.call('HGET', k.job, 'id'))
return {1, 'cancelled'}
