-- Move a job forward to ARGV[1] (never back, never out of a terminal state).
-- KEYS: job, events, inflight, results, order, responses, status_counts, by_age
-- ARGV: status, now, finished_ttl_seconds, watch_at, field, value, ...
-- Returns 1 when moved, 0 when the job already was there or beyond, -1 when it is missing.
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return -1 end
if RANK[ARGV[1]] <= RANK[current] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[7], current, -1)
redis.call('HINCRBY', KEYS[7], ARGV[1], 1)
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
if RANK[ARGV[1]] == TERMINAL then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
  redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
  redis.call('ZREM', KEYS[8], redis.call('HGET', KEYS[1], 'id'))
  event(KEYS[2], 'type', 'completed', 'status', ARGV[1], 'at', ARGV[2])
  local ttl = tonumber(ARGV[3]) * 1000
  for _, i in ipairs({1, 2, 4, 5, 6}) do  -- the job's own keys, not the shared ones
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
else
  event(KEYS[2], 'type', 'status', 'status', ARGV[1], 'at', ARGV[2])
  if ARGV[4] ~= '' then
    redis.call('ZADD', KEYS[3], 'XX', ARGV[4], redis.call('HGET', KEYS[1], 'id'))
  end
end
return 1
