-- Record a batch of poll answers in one call; per job, fenced by its own attempt number.
-- For each job: new generations are appended once (HSETNX) in the order first seen, the
-- answer goes to the audit list when it says something new (its envelope is sent only then),
-- the chain moves to attempt + 1, and a finishing answer moves the job to
-- its terminal status (move() in prelude). A stale copy of one job's poll changes nothing,
-- for that job only. With re-hosting on (`copy` set), each new generation's copy is marked
-- pending in the job's stored hash and put on the copies' due set, in the same call, so a
-- worker dying after this script cannot lose a copy.
-- KEYS: inflight, status_counts, by_age, copies_due, then per job: job, events, results,
--   order, responses, stored
-- ARGV: now, finished_ttl_seconds, then one JSON object per job:
--   attempt, apply (record an answer), envelope ('' unless kept or with results), keep
--   (push it to the audit list),
--   progress, cost, errors, next_at, watch_at, results ([[id, json], ...]),
--   finish (terminal status or ''), fields (flat list set on the job), final (return the job),
--   copy (the pending copy's JSON, '' when re-hosting is off)
-- Returns one {verdict, added ids, finished (0/1), fields (flat), results in order, number
-- of results (when some were added, else 0), stored (flat, with fields)} per job; verdict is
-- ok, stale or missing.
local now, ttl = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local a = cjson.decode(ARGV[i])
  local base = 4 + (i - 3) * 6
  local k = {job = KEYS[base + 1], events = KEYS[base + 2], results = KEYS[base + 3],
    order = KEYS[base + 4], responses = KEYS[base + 5], stored = KEYS[base + 6],
    inflight = KEYS[1], counts = KEYS[2], by_age = KEYS[3]}
  local job = redis.call('HMGET', k.job, 'status', 'poll_seq', 'id', 'provider', 'created_at',
    'tenant')
  if not job[1] then
    out[#out + 1] = {'missing', {}, 0, {}, {}, 0, {}}
  elseif job[2] ~= a.attempt or RANK[job[1]] == TERMINAL then
    out[#out + 1] = {'stale', {}, 0, {}, {}, 0, {}}
  else
    local added = {}
    -- A key the job's record gets here lives as long as the record: its PTTL, read once. A
    -- finishing answer skips this: move() gives every key of the job its finished expiry.
    local left = nil
    local function expire_with_job(key)
      if a.finish ~= '' then return end
      if left == nil then left = redis.call('PTTL', k.job) end
      if left > 0 then redis.call('PEXPIRE', key, left) end
    end
    if a.apply == 1 then
      for _, pair in ipairs(a.results) do
        if redis.call('HSETNX', k.results, pair[1], pair[2]) == 1 then
          if redis.call('RPUSH', k.order, pair[1]) == 1 then
            expire_with_job(k.results)
            expire_with_job(k.order)
          end
          if a.copy ~= '' then
            if redis.call('HSET', k.stored, pair[1], a.copy) == 1 then expire_with_job(k.stored) end
            redis.call('ZADD', KEYS[4], now, job[3] .. '|' .. pair[1])
          end
          event(k.events, 'type', 'partial', 'generation', pair[1], 'at', now)
          added[#added + 1] = pair[1]
        end
      end
      if a.keep == 1 or #added > 0 then
        local kept = redis.call('RPUSH', k.responses, a.envelope)
        if kept == 1 then
          expire_with_job(k.responses)
        elseif kept > MAX_RESPONSES then
          redis.call('LTRIM', k.responses, -MAX_RESPONSES, -1)
        end
      end
      redis.call('ZADD', k.inflight, 'XX', a.watch_at, job[3])
      redis.call('HINCRBY', k.job, 'polls', 1)
      -- one HSET for everything the answer sets on the record (commands per job count)
      local set = {'updated_at', now, 'errors', a.errors, 'lease_until', '0',
        'poll_seq', tostring(tonumber(a.attempt) + 1), 'next_poll_at', a.next_at}
      if a.progress ~= '' then set[#set + 1] = 'progress'; set[#set + 1] = a.progress end
      if a.cost ~= '' then set[#set + 1] = 'cost'; set[#set + 1] = a.cost end
      if job[1] == 'submitted' then
        set[#set + 1] = 'status'; set[#set + 1] = 'processing'
        set[#set + 1] = 'processing_at'; set[#set + 1] = now
        reindex(job[3], job[4], job[5], 'submitted', 'processing', nil)
        redis.call('HINCRBY', k.counts, 'submitted', -1)
        redis.call('HINCRBY', k.counts, 'processing', 1)
        tenant_moved(tenant_of(job[6]), 'submitted', 'processing')
        event(k.events, 'type', 'status', 'status', 'processing', 'at', now)
      end
      for _, value in ipairs(a.fields) do set[#set + 1] = value end
      redis.call('HSET', k.job, unpack(set))
    elseif #a.fields > 0 then
      redis.call('HSET', k.job, unpack(a.fields))
    end
    local finished = 0
    if a.finish ~= '' and move(k, a.finish, now, ttl, '', {}) == 1 then finished = 1 end
    local fields, results, stored = {}, {}, {}
    if a.final == 1 and finished == 1 then
      fields = redis.call('HGETALL', k.job)
      local order = redis.call('LRANGE', k.order, 0, -1)
      if #order > 0 then results = redis.call('HMGET', k.results, unpack(order)) end
      stored = redis.call('HGETALL', k.stored)
    end
    local count = 0
    if #added > 0 then count = redis.call('HLEN', k.results) end
    out[#out + 1] = {'ok', added, finished, fields, results, count, stored}
  end
end
return out
