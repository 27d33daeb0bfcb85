-- A consumer takes the next message of a kombu Redis queue and records it in kombu's unacked
-- hash in one step (kombu's BRPOP pops it first and records it later, from the consumer's
-- memory: a consumer killed in between loses it). The record is the one kombu writes itself
-- (`[message, exchange, routing_key]` by delivery tag, the time in unacked_index), so kombu's
-- restore and pollen's orphan scan read it as any other.
-- KEYS: unacked, unacked_index, then the queue keys in BRPOP's order (first non-empty wins)
-- ARGV: now
-- Returns {queue key, message, delivery tag} (tag false: a message without one, taken
-- unrecorded as BRPOP would; kombu's QoS records it), or nil when every queue is empty.
for i = 3, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, message = pcall(cjson.decode, item)
    local props = ok and type(message) == 'table' and message['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    if type(tag) ~= 'string' then
      return {KEYS[i], item, false}
    end
    local info = type(props['delivery_info']) == 'table' and props['delivery_info'] or {}
    local exchange, routing_key = info['exchange'] or '', info['routing_key'] or ''
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    redis.call('HSET', KEYS[1], tag,
      '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    return {KEYS[i], item, tag}
  end
end
return false
