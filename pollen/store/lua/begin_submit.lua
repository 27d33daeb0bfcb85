-- Count a submit attempt of one job and keep the request about to be sent (audit), and its
-- new push token unless it has one; only if the record still exists (a late write must not
-- create a bare record with no TTL after the job expired).
-- KEYS: job
-- ARGV: request (JSON), push_token ('' for none)
-- Returns {the attempt's number (0 when the record was gone), the job's push token ('' for
-- none)}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local attempt = redis.call('HINCRBY', KEYS[1], 'submit_attempts', 1)
redis.call('HSET', KEYS[1], 'sent_request', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSETNX', KEYS[1], 'push_token', ARGV[2]) end
return {attempt, redis.call('HGET', KEYS[1], 'push_token') or ''}
