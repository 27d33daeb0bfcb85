-- Undo create_job.lua for a job whose submit message could not be sent: exactly what it
-- wrote (the job hash, its event stream, both in-flight indexes, its listing index entry,
-- the queued counts).
-- Only a job still queued is undone; one that moved on is left alone. A job made ready for a
-- wake message leaves the ready set, and with `unwake` the wake mark goes too (its message
-- was not sent: the next create sends one).
-- KEYS: job, events, inflight, status_counts, by_age, ready_submits, submit_wake
-- ARGV: id, unwake ('1' or '')
-- Returns 1 when undone, 0 when there was nothing (or nothing safe) to undo.
redis.call('ZREM', KEYS[6], ARGV[1])
if ARGV[2] == '1' then redis.call('DEL', KEYS[7]) end
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local listed = redis.call('HMGET', KEYS[1], 'provider', 'tenant')
local provider = listed[1]
tenant_moved(tenant_of(listed[2]), 'queued', nil)
if provider then redis.call('ZREM', INDEX_PREFIX .. provider .. ':queued', ARGV[1]) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', -1)
return 1
