-- A push the ingress verified (its token is the job's): keep it for the audit, count it and
-- say what to poll. The push body is never the result; the poll this leads to is.
-- A push for a queued job (the provider's answer to its submit is not stored yet) is noted in
-- pushed_at, read by the submit step once it stores the answer: that job is polled at once.
-- A finished job's push changes nothing.
-- KEYS: job, pushes
-- ARGV: now, entry (JSON kept in the audit list), keep (how many pushes the list keeps)
-- Returns {status, poll_seq}, or {} when the job is gone.
local job = redis.call('HMGET', KEYS[1], 'status', 'poll_seq')
if not job[1] then return {} end
if RANK[job[1]] == TERMINAL then return {job[1], job[2] or '0'} end
redis.call('HINCRBY', KEYS[1], 'pushes', 1)
redis.call('HSET', KEYS[1], 'pushed_at', ARGV[1])
if redis.call('RPUSH', KEYS[2], ARGV[2]) == 1 then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
else
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
end
return {job[1], job[2] or '0'}
