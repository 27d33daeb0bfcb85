-- Count a submit attempt of one job, keep the request about to be sent (audit) and each
-- claimed field the job has none of (a new push token, an account); only if the record still
-- exists (a late write must not create a bare record with no TTL after the job expired).
-- For a provider whose creates carry no idempotency key, also take (read and delete) the
-- unanswered mark an earlier attempt's create left ('create_pending', set as the create is
-- sent and cleared with its answer): that create was never answered.
-- KEYS: job
-- ARGV: request (JSON), '1' to take the unanswered mark ('' not to), then field, value, ...
-- (the claims)
-- Returns {the attempt's number (0 when the record was gone: nothing else follows), the
-- unanswered mark taken ('' for none), then the value each claimed field has, in the order
-- claimed}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local attempt = redis.call('HINCRBY', KEYS[1], 'submit_attempts', 1)
redis.call('HSET', KEYS[1], 'sent_request', ARGV[1])
local out = {attempt, ''}
if ARGV[2] ~= '' then
  out[2] = redis.call('HGET', KEYS[1], 'create_pending') or ''
  redis.call('HDEL', KEYS[1], 'create_pending')
end
for i = 3, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
end
return out
