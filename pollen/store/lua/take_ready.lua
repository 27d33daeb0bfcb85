-- Take the ready jobs for a wake message (group commit), oldest first, and clear the wake
-- mark when none is left, so the next create sends a new wake. With a claim, the wake
-- message's claim (its holder's record of it) is rewritten in the same step to name the jobs
-- taken, so if its worker dies they are sent again like any held submit message.
-- Each job taken is watched until `expect_by` (a live worker has its submit in hand).
-- KEYS: ready_submits, submit_wake, inflight, held (the holder's claims; '' without a claim)
-- ARGV: limit, expect_by, tag (the message's claim), claim (its Held JSON; '' without one)
-- Returns {job ids taken, how many are left}.
local taken = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
local ids = {}
for i = 1, #taken, 2 do ids[#ids + 1] = taken[i] end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[2]) end
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[3], 'XX', 'GT', ARGV[2], id) end
if #ids > 0 and ARGV[4] ~= '' then
  local held = cjson.decode(ARGV[4])
  held['kwargs'] = {job_ids = ids}
  redis.call('HSET', KEYS[4], ARGV[3], cjson.encode(held))
end
return {ids, left}
