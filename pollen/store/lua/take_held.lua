-- Take the claims of one worker instance whose lease lapsed (in the server's time): every
-- message it held, and the instance leaves the holders (one caller takes them; a renewal
-- after this starts afresh). Each taken message is remembered as sent again (the scan of the
-- broker's deliveries leaves it alone).
-- KEYS: holders, held (that instance's hash), resent
-- ARGV: holder, resent TTL
-- Returns tag, message, tag, message, ... (empty when the lease was renewed meanwhile)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
if lease and tonumber(lease) > now then return {} end
local held = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 1, #held, 2 do redis.call('HSET', KEYS[3], held[i], tostring(now)) end
if #held > 0 then redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2])) end
return held
