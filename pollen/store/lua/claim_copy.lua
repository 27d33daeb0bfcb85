-- Claim one result's copy (re-hosting) for this worker: only a pending copy, one worker at a
-- time, counting the attempt. The copy stays on the due set at the end of the lease, so a worker that dies while
-- copying leaves it due again; a copy that is no longer pending leaves both sets.
-- KEYS: stored, results, job, copies_due, copies_running
-- ARGV: member (job id|generation id), generation id, now, lease_seconds
-- Returns {verdict, copy JSON, result JSON}: verdict ok, busy (another worker holds it), done
-- (stored or failed already) or missing (the job or the copy is gone).
local member, now = ARGV[1], tonumber(ARGV[3])
local copy = redis.call('HGET', KEYS[1], ARGV[2])
local result = redis.call('HGET', KEYS[2], ARGV[2])
if not copy or not result or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZREM', KEYS[5], member)
  return {'missing', '', ''}
end
if cjson.decode(copy).status ~= 'pending' then
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZREM', KEYS[5], member)
  return {'done', copy, result}
end
local held = tonumber(redis.call('ZSCORE', KEYS[5], member) or '0')
if held > now then
  redis.call('ZADD', KEYS[4], held, member)  -- look again when that lease ends
  return {'busy', copy, result}
end
local lease_end = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[5], lease_end, member)
redis.call('ZADD', KEYS[4], lease_end, member)
-- The attempt counts when it starts: a worker killed mid-copy (out of memory, a full disk, a
-- hard time limit) cannot have its copy tried forever.
local state = cjson.decode(copy)
state.attempts = (tonumber(state.attempts) or 0) + 1
copy = cjson.encode(state)
redis.call('HSET', KEYS[1], ARGV[2], copy)
return {'ok', copy, result}
