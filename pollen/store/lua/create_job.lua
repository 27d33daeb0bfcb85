-- Store a new queued job, unless the id exists.
-- KEYS: job, events (the job's Pub/Sub channel), inflight, status_counts, by_age
-- ARGV: id, now, ttl_seconds, watch_at, fingerprint, field, value, ...
-- Returns {1, ''} when created, else {0, the existing job's fingerprint ('' if it has none)}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'fingerprint') or ''}
end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[5], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', 1)
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
local listed = redis.call('HMGET', KEYS[1], 'provider', 'created_at', 'tenant')
reindex(ARGV[1], listed[1], listed[2] or ARGV[2], nil, 'queued', nil)
tenant_moved(tenant_of(listed[3]), nil, 'queued')
event(KEYS[2], 'type', 'status', 'status', 'queued', 'at', ARGV[2])
return {1, ''}
