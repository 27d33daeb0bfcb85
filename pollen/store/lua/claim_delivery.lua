-- Only one copy of a delivery message sends at a time; finished deliveries are left alone.
-- KEYS: delivery
-- ARGV: now, lease_seconds
-- Returns ok, busy, missing, or the delivery's final state.
local d = redis.call('HMGET', KEYS[1], 'state', 'lease_until')
if not d[1] then return 'missing' end
if FINAL_DELIVERY[d[1]] then return d[1] end
if d[1] == 'sending' and tonumber(d[2] or '0') > tonumber(ARGV[1]) then return 'busy' end
redis.call('HSET', KEYS[1], 'state', 'sending',
  'lease_until', tostring(tonumber(ARGV[1]) + tonumber(ARGV[2])))
return 'ok'
