-- Claim a delivery for one attempt and read what the attempt needs, in one round trip. Only
-- one copy of a delivery message sends at a time; finished deliveries are left alone; a
-- delivery waits while an earlier event of its job to the same target is unfinished (events
-- to one receiver arrive in order).
-- KEYS: delivery, gone (set of URLs that answered 410), due
-- ARGV: now, lease_seconds, recheck_seconds (the shortest ordering wait), id
-- The job's record and delivery list are named from the delivery's job_id (JOB_PREFIX ..
-- job_id, plus DELIVERIES_SUFFIX for the list), other deliveries from DELIVERY_PREFIX.
-- Returns {verdict, fields, gone, secret, finished_at, wait}: verdict is ok, blocked, busy,
-- missing, or the delivery's final state. With ok or blocked, fields is the delivery's hash
-- as a flat list. With ok, gone is 1 if its target answered 410 Gone before, secret the
-- job's own callback secret and finished_at when the job ended ('' where absent). With
-- blocked, the delivery is pending again, due in `wait` seconds.

-- Seconds to wait for the first unfinished earlier delivery of the job to the same target;
-- nil when nothing comes before this one.
local function ordering_wait(list, id, target, now, recheck)
  local ids = redis.call('LRANGE', list, 0, -1)
  if #ids < 2 then return nil end
  for _, earlier in ipairs(ids) do
    if earlier == id then return nil end
    local e = redis.call('HMGET', DELIVERY_PREFIX .. earlier, 'target', 'state', 'next_at')
    if e[1] == target and (e[2] == 'pending' or e[2] == 'sending') then
      if e[2] == 'sending' or not e[3] or e[3] == '' then return recheck end
      return math.max(recheck, tonumber(e[3]) - now + recheck)
    end
  end
  return nil
end

local d = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'target', 'job_id', 'event')
if not d[1] then return {'missing', {}, 0, '', '', ''} end
if FINAL_DELIVERY[d[1]] then return {d[1], {}, 0, '', '', ''} end
local now = tonumber(ARGV[1])
if d[1] == 'sending' and tonumber(d[2] or '0') > now then
  return {'busy', {}, 0, '', '', ''}
end
local job = JOB_PREFIX .. (d[4] or '')
local wait = nil
if d[5] ~= 'started' then
  wait = ordering_wait(job .. DELIVERIES_SUFFIX, ARGV[4], d[3], now, tonumber(ARGV[3]))
end
if wait then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'lease_until', '0')
  redis.call('ZADD', KEYS[3], string.format('%.17g', now + wait), ARGV[4])
  return {'blocked', redis.call('HGETALL', KEYS[1]), 0, '', '', string.format('%.17g', wait)}
end
redis.call('HSET', KEYS[1], 'state', 'sending',
  'lease_until', tostring(tonumber(ARGV[1]) + tonumber(ARGV[2])))
local owner = redis.call('HMGET', job, 'callback_secret', 'finished_at')
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('SISMEMBER', KEYS[2], d[3] or ''),
  owner[1] or '', owner[2] or '', ''}
