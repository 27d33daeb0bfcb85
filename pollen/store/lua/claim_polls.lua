-- Fencing for a batch of polls: per job, only the copy of poll number `attempt` that takes
-- the lease may act. Jobs are independent: one job's verdict never changes another's.
-- A job whose last lease holder died (its lease expired unrecorded) is not polled with
-- others: in a batch (more than one job) its verdict is `alone` and nothing changes, so the
-- caller polls it on its own, where the death is counted. A job that kills every worker
-- that polls it then takes down no batch twice, and its batch-mates are not blamed again.
-- KEYS: job_1, job_2, ...
-- ARGV: now, lease_seconds, attempt_1, attempt_2, ...
-- Returns one {verdict, number, fields} per job: verdict is ok, busy, alone, stale, done or
-- missing; number is the wait in seconds (busy) or the worker losses so far (ok); fields is
-- the job's hash as a flat list (ok only).
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local batch = #KEYS > 1
local out = {}
for i, key in ipairs(KEYS) do
  local attempt = ARGV[2 + i]
  local job = redis.call('HMGET', key, 'status', 'poll_seq', 'lease_until')
  if not job[1] then
    out[i] = {'missing', '0', {}}
  elseif RANK[job[1]] == TERMINAL then
    out[i] = {'done', '0', {}}
  elseif job[2] ~= attempt then
    out[i] = {'stale', '0', {}}
  else
    local held = tonumber(job[3] or '0')
    if held > now then
      out[i] = {'busy', string.format('%.6f', held - now), {}}
    elseif held > 0 and batch then
      out[i] = {'alone', '0', {}}
    else
      local lost = 0
      if held > 0 then
        -- The last holder of this attempt's lease never recorded its answer: its worker died.
        lost = redis.call('HINCRBY', key, 'worker_losses', 1)
      end
      redis.call('HSET', key, 'lease_until', string.format('%.6f', now + lease))
      out[i] = {'ok', tostring(lost), redis.call('HGETALL', key)}
    end
  end
end
return out
