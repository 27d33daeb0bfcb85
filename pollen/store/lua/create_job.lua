-- Store a new queued job, unless the id exists; with `wake_ms`, also make it ready for the
-- next wake message (group commit) and say whether this caller must send that message.
-- KEYS: job, events (the job's Pub/Sub channel), inflight, status_counts, by_age,
--   ready_submits, submit_wake
-- ARGV: id, now, ttl_seconds, watch_at, fingerprint, wake_ms ('': the caller sends the job's
--   own message), field, value, ...
-- Returns {1, '', wake} when created (wake: 1 when no wake message is on its way, so this
-- caller sends one), else {0, the existing job's fingerprint ('' if it has none), 0}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'fingerprint') or '', 0}
end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[5], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', 1)
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
local listed = redis.call('HMGET', KEYS[1], 'provider', 'created_at', 'tenant')
reindex(ARGV[1], listed[1], listed[2] or ARGV[2], nil, 'queued', nil)
tenant_moved(tenant_of(listed[3]), nil, 'queued')
event(KEYS[2], 'type', 'status', 'status', 'queued', 'at', ARGV[2])
local wake = 0
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
  if redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[6]) then wake = 1 end
end
return {1, '', wake}
