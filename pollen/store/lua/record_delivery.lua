-- Log one delivery attempt and move the delivery to its next state; a target that answered
-- 410 Gone is noted, so it is never called again.
-- KEYS: delivery, attempts_log, due, dead, gone
-- ARGV: id, state, attempt_json, due_at, now, error, target
-- Returns the number of attempts made so far.
redis.call('RPUSH', KEYS[2], ARGV[3])
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'lease_until', '0', 'last_error', ARGV[6],
  'updated_at', ARGV[5])
if ARGV[2] == 'pending' then
  redis.call('HSET', KEYS[1], 'next_at', ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if ARGV[2] == 'dead' then redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1]) end
if ARGV[2] == 'gone' then redis.call('SADD', KEYS[5], ARGV[7]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return n
