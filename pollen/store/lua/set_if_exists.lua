-- Set fields on a job's record only if it still exists (a late write must not create a bare
-- record with no TTL after the job expired), and drop the job from a follow-up set.
-- KEYS: job, follow_up (a sorted set; '' for none)
-- ARGV: id, field, value, ...
-- Returns 1 when written, 0 when the record was gone.
if KEYS[2] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
