-- Extend one worker instance's lease on the submit messages it holds, in the server's time
-- (a worker whose call waited out a Redis stall still renews for a whole lease; no clock of
-- any worker is compared with another's).
-- KEYS: holders
-- ARGV: holder, lease seconds
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return tostring(now)
