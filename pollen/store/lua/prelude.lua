-- Shared by every script, after the generated constants (pollen/store/scripts.py):
--   RANK        status -> rank, from pollen.models.JobStatus (statuses only move forward)
--   TERMINAL    the rank of the terminal statuses
--   MAX_RESPONSES  how many provider responses a job keeps
--   FINAL_DELIVERY  set of delivery states that never change again
--   INDEX_PREFIX, INDEX_EXPIRY  the listing indexes' key names (pollen/store/keys.py)
--   FINISHED_PREFIX, FINISHED_TTL  the per-minute counts of jobs reaching a terminal status
--   ADMIT_PREFIX   the admission state's keys (pollen/store/admission.py names each one)
--   TENANT_STATS, DEFAULT_TENANT  the per-tenant counts; the tenant of a job that names none
--   JOB_KEY_PREFIX  a job's record is JOB_KEY_PREFIX .. id
-- event(channel, field, value, ...): announce one lifecycle event on the job's channel (Pub/Sub:
-- what wait() listens to; nothing is stored, so a job costs no stream in memory).
local function event(channel, ...)
  local args, body = {...}, {}
  for i = 1, #args, 2 do body[args[i]] = args[i + 1] end
  redis.call('PUBLISH', channel, cjson.encode(body))
end

-- reindex(id, provider, created, from, to, expires_at): keep the listing indexes (one sorted
-- set per provider and status, scored by creation time) in step with a status change; `from`
-- is nil for a new job. A terminal job is noted with when its record expires, for trimming.
local function reindex(id, provider, created, from, to, expires_at)
  if not provider then return end  -- a bare record (tests): nothing to list it by
  created = created or '0'
  if from then redis.call('ZREM', INDEX_PREFIX .. provider .. ':' .. from, id) end
  redis.call('ZADD', INDEX_PREFIX .. provider .. ':' .. to, created, id)
  if expires_at then
    redis.call('ZADD', INDEX_EXPIRY, expires_at, provider .. '|' .. to .. '|' .. id)
  end
end

-- tenant_of(value): the tenant a stored `tenant` field names (the default one when unset)
local function tenant_of(value)
  if not value or value == '' then return DEFAULT_TENANT end
  return value
end

-- tenant_moved(tenant, from, to): the per-tenant status counts follow one job's status
-- (`from` is nil for a new job, `to` nil for one that is undone)
local function tenant_moved(tenant, from, to)
  if from then redis.call('HINCRBY', TENANT_STATS, tenant .. '|' .. from, -1) end
  if to then redis.call('HINCRBY', TENANT_STATS, tenant .. '|' .. to, 1) end
end

-- admit_key(provider, part): one key of a provider's admission state
local function admit_key(provider, part)
  return ADMIT_PREFIX .. provider .. ':' .. part
end

-- unqueue(id, provider, tenant, priority): take a job out of its provider's admission queue
-- (its tenant leaves the priority's rotation when it has no job left there); 1 if it was in
local function unqueue(id, provider, tenant, priority)
  local q = admit_key(provider, 'q:' .. priority .. ':' .. tenant)
  if redis.call('ZREM', q, id) == 0 then return 0 end
  local waiting = admit_key(provider, 'waiting')
  if redis.call('HINCRBY', waiting, tenant, -1) <= 0 then redis.call('HDEL', waiting, tenant) end
  if redis.call('EXISTS', q) == 0 then
    local rotation = admit_key(provider, 't:' .. priority)
    local pass = redis.call('ZSCORE', rotation, tenant)
    if pass then  -- kept for when it waits again: leaving never moves a tenant ahead
      redis.call('HSET', admit_key(provider, 'left'), priority .. '|' .. tenant, pass)
    end
    redis.call('ZREM', rotation, tenant)
    if redis.call('EXISTS', rotation) == 0 then
      redis.call('ZREM', admit_key(provider, 'prios'), priority)
    end
  end
  return 1
end

-- release(id, provider, account, tenant): give back the provider-account slot the job holds
-- (a no-op when it holds none)
local function release(id, provider, account, tenant)
  redis.call('ZREM', admit_key(provider, 'slots:' .. account), id)
  redis.call('ZREM', admit_key(provider, 'held:' .. tenant), id)
  redis.call('HDEL', admit_key(provider, 'owners'), id)
end

-- leave_admission(job_key, id, provider, fields): a job that ends gives back its slot or
-- leaves the admission queue; `fields` = {tenant, account, waiting, priority}
local function leave_admission(job_key, id, provider, f)
  local tenant = tenant_of(f[1])
  if f[2] and f[2] ~= '' then release(id, provider, f[2], tenant) end
  if f[3] == '1' then
    unqueue(id, provider, tenant, f[4] or '0')
    redis.call('HDEL', job_key, 'waiting', 'queue_reason')
  end
end

-- move(k, status, now, finished_ttl_seconds, watch_at, fields): move one job forward to
-- `status` (never back, never out of a terminal state) and set `fields` (a flat list).
-- k holds the keys: job, events, results, order, responses, inflight, counts, by_age, stored.
-- Returns 1 when moved, 0 when the job already was there or beyond, -1 when it is missing.
local MOVE_READS = {'status', 'id', 'provider', 'created_at', 'tenant', 'account', 'waiting',
  'priority', 'cost'}
local function move(k, status, now, ttl, watch, fields)
  local read = redis.call('HMGET', k.job, unpack(MOVE_READS))
  local current = read[1]
  if not current then return -1 end
  if RANK[status] <= RANK[current] then return 0 end
  local set = {'status', status, 'updated_at', now}
  local given = {}
  for i = 1, #fields, 2 do
    set[#set + 1] = fields[i]; set[#set + 1] = fields[i + 1]
    given[fields[i]] = fields[i + 1]
  end
  if RANK[status] == TERMINAL then set[#set + 1] = 'finished_at'; set[#set + 1] = now end
  redis.call('HSET', k.job, unpack(set))
  redis.call('HINCRBY', k.counts, current, -1)
  redis.call('HINCRBY', k.counts, status, 1)
  -- what the record holds now: read before the HSET, with the fields it set
  local job = {}
  for i = 2, #MOVE_READS do
    local name = MOVE_READS[i]
    if given[name] ~= nil then job[i - 1] = given[name] else job[i - 1] = read[i] end
  end
  local id = job[1]
  local tenant = tenant_of(job[4])
  local expires_at = nil
  if RANK[status] == TERMINAL then expires_at = tonumber(now) + tonumber(ttl) end
  reindex(id, job[2], job[3], current, status, expires_at)
  tenant_moved(tenant, current, status)
  if RANK[status] == TERMINAL then
    if job[2] then leave_admission(k.job, id, job[2], {job[4], job[5], job[6], job[7]}) end
    local cost = tonumber(job[8] or '')
    if cost and cost > 0 and cost < math.huge then  -- no NaN, infinity or refund (as metrics)
      redis.call('HINCRBYFLOAT', TENANT_STATS, tenant .. '|cost', job[8])
    end
    local minute = FINISHED_PREFIX .. math.floor(tonumber(now) / 60)
    -- the minute's hash gets its expiry with its first count of each status
    if redis.call('HINCRBY', minute, status, 1) == 1 then
      redis.call('EXPIRE', minute, FINISHED_TTL)
    end
    redis.call('ZREM', k.inflight, id)
    redis.call('ZREM', k.by_age, id)
    event(k.events, 'type', 'completed', 'status', status, 'at', now)
    local ms = tonumber(ttl) * 1000
    -- the job's push list (keys.pushes) is named after its record, not passed by every caller
    local pushes = k.job .. ':pushes'
    for _, key in ipairs({k.job, k.results, k.order, k.responses, k.stored, pushes}) do
      redis.call('PEXPIRE', key, ms)  -- a no-op for a key the job never had (k.events is a
      -- Pub/Sub channel, not a key)
    end
  else
    event(k.events, 'type', 'status', 'status', status, 'at', now)
    if watch ~= '' then redis.call('ZADD', k.inflight, 'XX', watch, id) end
  end
  return 1
end
