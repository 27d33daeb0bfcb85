-- Record one poll's answer and hand the chain to attempt + 1. New generations are appended
-- once (HSETNX), in the order first seen; a copy of the same poll (stale attempt) changes
-- nothing.
-- KEYS: job, events, results, order, responses, inflight, status_counts
-- ARGV: attempt, now, envelope, progress, cost, errors_json, next_poll_at, watch_at, n,
--       id1, json1, ...
-- Returns {verdict, ids of the generations added}; verdict is ok, stale or missing.
local job = redis.call('HMGET', KEYS[1], 'status', 'poll_seq')
if not job[1] then return {'missing', {}} end
if job[2] ~= ARGV[1] or RANK[job[1]] == TERMINAL then return {'stale', {}} end
local added = {}
local n = tonumber(ARGV[9])
for i = 0, n - 1 do
  local id, body = ARGV[10 + 2 * i], ARGV[11 + 2 * i]
  if redis.call('HSETNX', KEYS[3], id, body) == 1 then
    redis.call('RPUSH', KEYS[4], id)
    event(KEYS[2], 'type', 'partial', 'generation', id, 'at', ARGV[2])
    added[#added + 1] = id
  end
end
redis.call('ZADD', KEYS[6], 'XX', ARGV[8], redis.call('HGET', KEYS[1], 'id'))
redis.call('RPUSH', KEYS[5], ARGV[3])
redis.call('LTRIM', KEYS[5], -MAX_RESPONSES, -1)
redis.call('HINCRBY', KEYS[1], 'polls', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'errors', ARGV[6], 'lease_until', '0',
  'poll_seq', tostring(tonumber(ARGV[1]) + 1), 'next_poll_at', ARGV[7])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'cost', ARGV[5]) end
if job[1] == 'submitted' then
  redis.call('HSET', KEYS[1], 'status', 'processing')
  redis.call('HINCRBY', KEYS[7], 'submitted', -1)
  redis.call('HINCRBY', KEYS[7], 'processing', 1)
  event(KEYS[2], 'type', 'status', 'status', 'processing', 'at', ARGV[2])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  for i = 2, 5 do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return {'ok', added}
