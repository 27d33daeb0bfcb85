-- Count a submit attempt of one job, keep the request about to be sent (audit) and each
-- claimed field the job has none of (a new push token, an account); only if the record still
-- exists (a late write must not create a bare record with no TTL after the job expired).
-- KEYS: job
-- ARGV: request (JSON), then field, value, ... (the claims)
-- Returns {the attempt's number (0 when the record was gone: nothing else follows), then the
-- value each claimed field has, in the order claimed}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local out = {redis.call('HINCRBY', KEYS[1], 'submit_attempts', 1)}
redis.call('HSET', KEYS[1], 'sent_request', ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
end
return out
