-- Take the ready jobs for a wake message (group commit), oldest first, and clear the wake
-- mark when none is left, so the next create sends a new wake.
-- KEYS: ready_submits, submit_wake
-- ARGV: limit
-- Returns the job ids taken.
local taken = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
local ids = {}
for i = 1, #taken, 2 do ids[#ids + 1] = taken[i] end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return ids
