-- Move one message from a queue to another, unless a consumer took it first.
-- KEYS: from, to
-- ARGV: the message as it is in `from`, the message to push onto `to`
-- Returns 1 when moved, 0 when the message was no longer in `from`.
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
