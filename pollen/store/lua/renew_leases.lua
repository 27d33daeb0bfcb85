-- Extend the leases a running poll batch holds, so a short lease outlives a slow provider
-- answer while its worker is alive, and expires soon after the worker dies. With until 0,
-- give them back (the batch failed before recording: no worker died).
-- KEYS: job_1, job_2, ...
-- ARGV: until (the new lease end), attempt_1, attempt_2, ...
-- Returns how many leases were extended (a job whose chain moved on, or that finished, is
-- left alone).
local renewed = 0
for i, key in ipairs(KEYS) do
  local job = redis.call('HMGET', key, 'status', 'poll_seq', 'lease_until')
  if job[1] and RANK[job[1]] ~= TERMINAL and job[2] == ARGV[1 + i]
      and tonumber(job[3] or '0') > 0 then
    redis.call('HSET', key, 'lease_until', ARGV[1])
    renewed = renewed + 1
  end
end
return renewed
