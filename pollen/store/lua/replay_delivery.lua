-- Make a delivery pending again with a fresh schedule (its webhook-id stays the same).
-- KEYS: delivery, due, dead
-- ARGV: id, now
-- Returns 1 when replayed, 0 when the delivery is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'attempts', '0', 'lease_until', '0',
  'next_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
