-- Take up to `limit` due deliveries and push each one's due time forward by `watch_seconds`
-- (if its message is lost again, it comes back then).
-- KEYS: due
-- ARGV: now, limit, watch_seconds
-- Returns the delivery ids.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local later = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], later, id) end
return ids
