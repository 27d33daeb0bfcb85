-- Only one copy of a delivery message sends at a time; finished deliveries are left alone.
-- KEYS: delivery, gone (set of URLs that answered 410)
-- ARGV: now, lease_seconds
-- Returns {verdict, fields, gone}: verdict is ok, busy, missing, or the delivery's final
-- state; with ok, the delivery's hash as a flat list and 1 if its target answered 410 Gone
-- before (what the sender needs, in the same round trip).
local d = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'target')
if not d[1] then return {'missing', {}, 0} end
if FINAL_DELIVERY[d[1]] then return {d[1], {}, 0} end
if d[1] == 'sending' and tonumber(d[2] or '0') > tonumber(ARGV[1]) then
  return {'busy', {}, 0}
end
redis.call('HSET', KEYS[1], 'state', 'sending',
  'lease_until', tostring(tonumber(ARGV[1]) + tonumber(ARGV[2])))
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('SISMEMBER', KEYS[2], d[3] or '')}
