-- Admission to one provider's capped accounts, in one call: give back refused slots, queue
-- new jobs, then admit waiting jobs into free slots.
--
-- The queue (keys from admit_key(provider, ...), prelude):
--   prios             sorted set of the priorities that have waiting jobs (score = priority)
--   t:<prio>          sorted set: the tenants with waiting jobs at that priority, scored by
--                     their pass (stride scheduling: a tenant's pass grows by 1/weight per job
--                     admitted, the lowest pass goes next, so equal weights take turns)
--   q:<prio>:<tenant> sorted set: that tenant's waiting jobs at that priority, by creation
--   vt                hash prio -> the pass of the last job admitted there (a tenant that
--                     starts waiting joins the turn at that point, or at its own pass when it
--                     left with a later one: waiting again never moves a tenant ahead)
--   left              hash "<prio>|<tenant>" -> the pass a tenant had when it stopped waiting
--   waiting           hash tenant -> its waiting jobs
--   slots:<account>   sorted set: the jobs holding one of the account's slots, by admission
--   held:<tenant>     sorted set: the jobs of the tenant holding a slot (its own cap)
--   owners            hash job -> tenant of every job holding a slot (the sweep gives a
--                     vanished job's share back to its tenant)
--   lowered           hash account -> "cap|until": a cap lowered after a capacity refusal
--   capped            a string, set for a while by every admission of a worker that knows
--                     the cap (a queue without it is stranded: its cap was removed)
--   served            hash "<prio>|<tenant>" -> the admission count at the tenant's last
--                     admission at that priority ('#': the count): ties are broken within a
--                     priority's own rotation, so a turn at another priority is no turn here
-- A job's record says where it is: `waiting` = 1 while queued here, `account` once admitted.
--
-- Order: the highest priority first; within it, tenants by pass (equal passes: the tenant
-- served least recently), skipping a tenant at its cap (then lower priorities go, so a capped
-- tenant never blocks them); within a tenant, FIFO.
-- KEYS: inflight
-- ARGV: provider, now, limit (most jobs to admit), accounts JSON [[name, cap], ...],
--   tenants JSON {tenant: [weight, cap (0: none)]}, submit_watch (an admitted job's next step
--   is overdue after it), grace, cooldown_until, requeue JSON [[id, account, kind], ...]
--   (kind: 'capacity' or 'auth'),
--   enqueue JSON [[id, tenant, priority, created_at, deadline_at], ...], capped ('1' from a
--   worker whose settings cap the provider: marks the queue as tended for CAPPED_MARK_SECONDS)
-- Returns {admitted (flat: id, account, ...), held (flat: id, account: jobs of `enqueue` that
-- were admitted earlier), waiting (flat: id, reason: jobs this call queued or re-queued that
-- still wait), requeued, expired (ids whose deadline passed while they waited: taken out of
-- the queue, not admitted, their queue_reason kept so the submit step that times them out
-- can say why)}.
local provider, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local accounts = cjson.decode(ARGV[4])
local shares = cjson.decode(ARGV[5])
local submit_watch, grace, cooldown_until = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local requeue, enqueue = cjson.decode(ARGV[9]), cjson.decode(ARGV[10])
if ARGV[11] == '1' then  -- a worker that knows the cap: the queue is not stranded
  redis.call('SET', admit_key(provider, 'capped'), tostring(now), 'EX', CAPPED_MARK_SECONDS)
end
local INFLIGHT = KEYS[1]
local waiting_key = admit_key(provider, 'waiting')
local prios_key = admit_key(provider, 'prios')
local vt_key = admit_key(provider, 'vt')
local lowered_key = admit_key(provider, 'lowered')
local left_key = admit_key(provider, 'left')

local function share(tenant)
  local s = shares[tenant]
  if s then return tonumber(s[1]), tonumber(s[2]) end
  return 1, 0
end

-- put(id, tenant, prio, created): queue one job (its record says waiting)
local function put(id, tenant, prio, created)
  local q = admit_key(provider, 'q:' .. prio .. ':' .. tenant)
  if redis.call('ZADD', q, created, id) == 0 then return end
  redis.call('HINCRBY', waiting_key, tenant, 1)
  local rotation = admit_key(provider, 't:' .. prio)
  if not redis.call('ZSCORE', rotation, tenant) then
    local pass = tonumber(redis.call('HGET', vt_key, prio) or '0')
    local left = redis.call('HGET', left_key, prio .. '|' .. tenant)
    if left then
      pass = math.max(pass, tonumber(left))
      redis.call('HDEL', left_key, prio .. '|' .. tenant)
    end
    redis.call('ZADD', rotation, pass, tenant)
  end
  redis.call('ZADD', prios_key, tonumber(prio), prio)
  redis.call('HSET', JOB_KEY_PREFIX .. id, 'waiting', '1')
end

-- 1. refusals: the slot goes back, the job waits again at its place in the queue (with a
-- reason, as a new job), and the account's cap is lowered until cooldown_until: to what it
-- still holds after a capacity refusal, to 0 after it refused its key ('auth')
local requeued = 0
local refused = {}
local fresh = {}  -- the jobs queued by this call: [id, tenant, priority] (they get a reason)
for _, r in ipairs(requeue) do
  local id, account, kind = r[1], r[2], r[3]
  local job_key = JOB_KEY_PREFIX .. id
  local f = redis.call('HMGET', job_key, 'status', 'account', 'tenant', 'priority', 'created_at',
    'deadline_at')
  if f[1] == 'queued' and f[2] == account then
    local tenant = tenant_of(f[3])
    release(id, provider, account, tenant)
    redis.call('HDEL', job_key, 'account', 'admitted_at')
    redis.call('HINCRBY', job_key, 'capacity_refusals', 1)
    put(id, tenant, f[4] or '0', tonumber(f[5] or now))
    fresh[#fresh + 1] = {id, tenant, f[4] or '0'}
    if f[6] then redis.call('ZADD', INFLIGHT, 'XX', tonumber(f[6]) + grace, id) end
    if kind == 'auth' or not refused[account] then refused[account] = kind end
    requeued = requeued + 1
  end
end
for account, kind in pairs(refused) do
  local holds = 0
  if kind ~= 'auth' then holds = redis.call('ZCARD', admit_key(provider, 'slots:' .. account)) end
  redis.call('HSET', lowered_key, account, holds .. '|' .. cooldown_until)
end

-- 2. free slots per account (a lowered cap holds until its time is up)
local free, total = {}, 0
local in_use, capacity = 0, 0
for i, a in ipairs(accounts) do
  local cap = tonumber(a[2])
  local low = redis.call('HGET', lowered_key, a[1])
  if low then
    local sep = string.find(low, '|', 1, true)
    if tonumber(string.sub(low, sep + 1)) > now then
      cap = math.min(cap, tonumber(string.sub(low, 1, sep - 1)))
    else
      redis.call('HDEL', lowered_key, a[1])
    end
  end
  local used = redis.call('ZCARD', admit_key(provider, 'slots:' .. a[1]))
  free[i] = math.max(0, cap - used)
  total = total + free[i]
  in_use = in_use + used
  capacity = capacity + cap
end

-- take(id, tenant, job_key): give the job a slot of the account with the most free ones
local function take(id, tenant, job_key)
  local best = 1
  for i = 2, #free do if free[i] > free[best] then best = i end end
  local account = accounts[best][1]
  free[best] = free[best] - 1
  total = total - 1
  in_use = in_use + 1
  redis.call('ZADD', admit_key(provider, 'slots:' .. account), now, id)
  redis.call('ZADD', admit_key(provider, 'held:' .. tenant), now, id)
  redis.call('HSET', admit_key(provider, 'owners'), id, tenant)
  redis.call('HSET', job_key, 'account', account, 'admitted_at', tostring(now))
  redis.call('ZADD', INFLIGHT, 'XX', submit_watch, id)
  return account
end

local admitted, expired = {}, {}

-- 3. new jobs: those still queued and neither waiting nor admitted take a free slot at once
-- when nobody waits and they all find one (nothing to be fair about: the common case, at a
-- few commands a job); otherwise they are queued and the fair order below decides. Those
-- admitted earlier (a redelivered submit, the reconciler's resubmit) are reported so they are
-- sent. Only a job its account's slots hold counts as admitted: an `account` field without
-- the slot (put back by a copy of its submit that another copy's refusal overtook) is cleared
-- and the job queued.
local held = {}
local new = {}
for _, e in ipairs(enqueue) do
  local id = e[1]
  local job_key = JOB_KEY_PREFIX .. id
  local f = redis.call('HMGET', job_key, 'status', 'waiting', 'account')
  local account = f[3]
  if account == '' then account = nil end
  if account and not redis.call('ZSCORE', admit_key(provider, 'slots:' .. account), id) then
    redis.call('HDEL', job_key, 'account', 'admitted_at')
    account = nil
  end
  if f[1] == 'queued' then
    if account then
      held[#held + 1] = id
      held[#held + 1] = account
    elseif f[2] ~= '1' then
      new[#new + 1] = e
    end
  end
end
local direct = #new <= total and #new <= limit and redis.call('EXISTS', prios_key) == 0
for _, e in ipairs(new) do
  local id, tenant = e[1], e[2]
  local job_key = JOB_KEY_PREFIX .. id
  local _, cap = share(tenant)
  if direct and tonumber(e[5]) > now
      and (cap <= 0 or redis.call('ZCARD', admit_key(provider, 'held:' .. tenant)) < cap) then
    admitted[#admitted + 1] = id
    admitted[#admitted + 1] = take(id, tenant, job_key)
  else
    direct = false  -- from here on, in the queue: its order stays fair and FIFO
    put(id, tenant, e[3], tonumber(e[4]))
    redis.call('ZADD', INFLIGHT, 'XX', tonumber(e[5]) + grace, id)
    fresh[#fresh + 1] = e
  end
end

local served_key = admit_key(provider, 'served')

local function admissible(tenant)
  local _, cap = share(tenant)
  return cap <= 0 or redis.call('ZCARD', admit_key(provider, 'held:' .. tenant)) < cap
end

-- last_served(prio, tenant): when the tenant's last job at that priority was admitted (a count
-- of admissions; 0: never)
local function last_served(prio, tenant)
  return tonumber(redis.call('HGET', served_key, prio .. '|' .. tenant) or '0')
end

-- next_turn(): the priority, tenant and pass whose job goes next, or nil. Among admissible
-- tenants of equal pass, the one served least recently goes first (a strict rotation).
local function next_turn()
  for _, prio in ipairs(redis.call('ZREVRANGE', prios_key, 0, -1)) do
    local rotation = admit_key(provider, 't:' .. prio)
    local start = 0
    while true do
      local chunk = redis.call('ZRANGE', rotation, start, start + 15, 'WITHSCORES')
      if #chunk == 0 then break end
      for i = 1, #chunk, 2 do
        local tenant, pass = chunk[i], chunk[i + 1]
        if admissible(tenant) then
          local best, best_at = tenant, last_served(prio, tenant)
          local ties = redis.call('ZRANGEBYSCORE', rotation, pass, pass, 'LIMIT', 0, 64)
          for _, other in ipairs(ties) do
            if other ~= best then
              local at = last_served(prio, other)
              if at < best_at and admissible(other) then best, best_at = other, at end
            end
          end
          return prio, best, tonumber(pass)
        end
      end
      start = start + 16
    end
  end
  return nil
end

-- 4. admit from the queue (a job whose deadline passed while it waited takes no slot and
-- costs its tenant no turn: it leaves the queue and is reported; at most `limit` per call)
while total > 0 and #admitted < 2 * limit and #expired < limit do
  local prio, tenant, pass = next_turn()
  if not prio then break end
  local q = admit_key(provider, 'q:' .. prio .. ':' .. tenant)
  local id = redis.call('ZRANGE', q, 0, 0)[1]
  if not id then  -- a turn with no job left (should not happen): drop the turn
    local rotation = admit_key(provider, 't:' .. prio)
    redis.call('ZREM', rotation, tenant)
    if redis.call('EXISTS', rotation) == 0 then redis.call('ZREM', prios_key, prio) end
  end
  local job_key = JOB_KEY_PREFIX .. (id or '')
  local f = {}
  if id then f = redis.call('HMGET', job_key, 'status', 'deadline_at') end
  local late = f[1] == 'queued' and f[2] and tonumber(f[2]) <= now
  if id then
    if f[1] == 'queued' and not late then
      -- the tenant's pass moves on before unqueue() keeps it for a tenant that leaves
      local weight = share(tenant)
      redis.call('ZADD', admit_key(provider, 't:' .. prio), 'XX', pass + 1 / weight, tenant)
    end
    unqueue(id, provider, tenant, prio)
    redis.call('HDEL', job_key, 'waiting')
  end
  if late then
    expired[#expired + 1] = id
  elseif f[1] == 'queued' then  -- else it ended meanwhile (or its record is gone)
    redis.call('HDEL', job_key, 'queue_reason')
    admitted[#admitted + 1] = id
    admitted[#admitted + 1] = take(id, tenant, job_key)
    redis.call('HSET', vt_key, prio, tostring(pass))
    redis.call('HSET', served_key, prio .. '|' .. tenant, redis.call('HINCRBY', served_key, '#', 1))
  end
end

-- 5. why the jobs this call queued still wait, in words
local waiting = {}
if #fresh > 0 then
  local counts = redis.call('HVALS', waiting_key)
  local jobs = 0
  for _, n in ipairs(counts) do jobs = jobs + tonumber(n) end
  for _, e in ipairs(fresh) do
    local id, tenant, prio = e[1], e[2], e[3]
    local job_key = JOB_KEY_PREFIX .. id
    if redis.call('HGET', job_key, 'waiting') == '1' then
      local ahead = redis.call('ZRANK', admit_key(provider, 'q:' .. prio .. ':' .. tenant), id)
      local _, cap = share(tenant)
      local mine = ''
      if cap > 0 then
        local holds = redis.call('ZCARD', admit_key(provider, 'held:' .. tenant))
        mine = string.format('; tenant %s holds %d of its %d', tenant, holds, cap)
      end
      local reason = string.format(
        'waiting for capacity on %s (as it joined the queue: %d of %d slots in use across %d ' ..
        'account(s)%s; %d job(s) waiting across %d tenant(s), %d of tenant %s ahead of it at ' ..
        'priority %s)',
        provider, in_use, capacity, #accounts, mine, jobs, #counts, ahead or 0, tenant, prio)
      redis.call('HSET', job_key, 'queue_reason', reason)
      waiting[#waiting + 1] = id
      waiting[#waiting + 1] = reason
    end
  end
end
return {admitted, held, waiting, requeued, expired}
