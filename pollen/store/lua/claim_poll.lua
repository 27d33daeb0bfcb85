-- Fencing: only the copy of poll message number `attempt` that holds the lease may act.
-- KEYS: job
-- ARGV: attempt, now, lease_seconds
-- Returns {verdict, wait seconds (busy) or worker losses so far (ok)};
-- verdict is ok, busy, stale, done or missing.
local job = redis.call('HMGET', KEYS[1], 'status', 'poll_seq', 'lease_until')
if not job[1] then return {'missing', '0'} end
if RANK[job[1]] == TERMINAL then return {'done', '0'} end
if job[2] ~= ARGV[1] then return {'stale', '0'} end
local now = tonumber(ARGV[2])
local lease = tonumber(job[3] or '0')
if lease > now then return {'busy', string.format('%.6f', lease - now)} end
local lost = 0
if lease > 0 then
  -- The last holder of this attempt's lease never recorded its answer: its worker died.
  lost = redis.call('HINCRBY', KEYS[1], 'worker_losses', 1)
end
redis.call('HSET', KEYS[1], 'lease_until', string.format('%.6f', now + tonumber(ARGV[3])))
return {'ok', tostring(lost)}
