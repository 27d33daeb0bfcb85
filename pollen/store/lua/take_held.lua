-- Take the claims of one worker instance whose lease lapsed: every message it held, and the
-- instance leaves the holders (one caller takes them; a renewal after this starts afresh).
-- KEYS: holders, held (that instance's hash)
-- ARGV: holder, now
-- Returns tag, message, tag, message, ... (empty when the lease was renewed meanwhile)
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
if lease and tonumber(lease) > tonumber(ARGV[2]) then return {} end
local held = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return held
