-- Remove and return the parked polls due before the horizon.
-- KEYS: parked
-- ARGV: horizon, limit
-- Returns member, score, member, score, ...
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #taken, 2 do redis.call('ZREM', KEYS[1], taken[i]) end
return taken
