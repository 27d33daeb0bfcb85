-- What the ingress checks a push against: the job's push token and provider. A key that is not
-- a job record (a push token can name any id) answers as if the job were absent.
-- KEYS: job
-- ARGV: (none)
-- Returns {push_token, provider} (each false when unset), or {} when there is no job record.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return {} end
return redis.call('HMGET', KEYS[1], 'push_token', 'provider')
