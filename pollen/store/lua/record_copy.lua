-- Record one copy attempt: the copy's new state, and the end of this worker's lease. Pending:
-- due again at `due_at`; stored or failed: off the due set. A copy that is no longer pending
-- (another attempt finished it) and a job that expired are left alone. The job's Pub/Sub
-- channel hears of it (wait() and dashboards).
-- KEYS: stored, job, copies_due, copies_running, events
-- ARGV: member (job id|generation id), generation id, copy JSON, status, due_at, now
-- Returns {1, job status} when recorded, {0, ''} when not.
local member = ARGV[1]
redis.call('ZREM', KEYS[4], member)
local current = redis.call('HGET', KEYS[1], ARGV[2])
local status = redis.call('HGET', KEYS[2], 'status')
if not status or not current or cjson.decode(current).status ~= 'pending' then
  redis.call('ZREM', KEYS[3], member)
  return {0, ''}
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local left = redis.call('PTTL', KEYS[2])
if left > 0 then redis.call('PEXPIRE', KEYS[1], left) end
if ARGV[4] == 'pending' then
  redis.call('ZADD', KEYS[3], ARGV[5], member)
else
  redis.call('ZREM', KEYS[3], member)
end
event(KEYS[5], 'type', 'stored', 'generation', ARGV[2], 'status', ARGV[4], 'at', ARGV[6])
return {1, status}
