-- Stop watching a job that expired or finished (a terminal write that lost its ZREM).
-- KEYS: inflight, by_age
-- ARGV: id
-- Returns how many of the two indexes held it.
return redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
