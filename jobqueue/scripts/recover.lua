--[[
recover: give dead workers' jobs back to the queue and fail jobs past their backstop deadline.

Runs at most once per interval across a model's workers (a lock key with a TTL), like bullmq's stalled
checker. A worker is dead when its heartbeat deadline has passed, except during the grace period that
follows a silence of every worker (Redis itself was unreachable or stalled: the workers are alive and
need one TTL to beat again). Only jobs whose record names the dead worker are touched: a job another
worker has since taken is left alone. Requeued jobs become suspects, bisected like AWS Lambda's
BisectBatchOnFunctionError: which held job killed the worker is unknown, so the held batch is split
in two halves, each a suspect group that runs as a batch of its own (`claim`). The half that dies
again is split again; the other completes. A culprit among n jobs is found in O(log n) runs, and an
input that kills its worker cannot take the rest of its batch down with it. Only a job that died
alone has the attempt counted (MAX_ATTEMPTS); a death in a batch is not blamed on each member.
Its processing list is walked head (newest) to tail (oldest), each id RPUSHed: FIFO is kept.

KEYS[1] workers        ZSET   worker id -> heartbeat deadline, ms
KEYS[2] inflight       ZSET   job id -> backstop deadline, ms
KEYS[3] dead           LIST   dead-lettered ids (bounded)
KEYS[4] lock           STRING recovery lock
KEYS[5] stats          HASH   counters, grace mark
KEYS[6] notify         ZSET   webhook outbox
KEYS[7] pending high   LIST
KEYS[8] pending normal LIST
KEYS[9] pending low    LIST
ARGV[1] caller's worker id (lock owner)
ARGV[2] lock ttl, ms (the recovery interval)
ARGV[3] job key prefix
ARGV[4] max attempts
ARGV[5] job ttl, seconds
ARGV[6] events channel
ARGV[7] processing list key prefix (one list per worker id)
ARGV[8] max dead letters kept
ARGV[9] principal key prefix
ARGV[10] worker ttl, ms (a silence of every worker this long means Redis itself was away)
Returns {requeued, failed, timed_out, dead_workers}, or {-10} when another worker holds the lock,
or {-11} during the grace period.
]]
local workers, inflight, dead, lock, stats, notify = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local pending_lists = {high = KEYS[7], normal = KEYS[8], low = KEYS[9]}
local wid, lock_ttl, job_prefix = ARGV[1], ARGV[2], ARGV[3]
local max_attempts, ttl, events = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local processing_prefix, max_dead, principal_prefix = ARGV[7], tonumber(ARGV[8]), ARGV[9]
local worker_ttl = tonumber(ARGV[10])

if not redis.call('SET', lock, wid, 'NX', 'PX', lock_ttl) then return {-10} end
local now = now_ms()
if now < tonumber(redis.call('HGET', stats, 'grace_until') or 0) then return {-11} end
-- The caller beat just before calling, so a last beat older than the TTL means this call was held up
-- by a Redis stall and runs first after it, before any worker could beat: start the grace here too.
if grace_after_silence(stats, worker_ttl, now) then return {-11} end
local requeued, failed, timed_out = 0, 0, 0
local ended, back = {}, {}
local unfinished_drop = {}

local function fail(job, id, err, owner, callback, idem)
  redis.call('HSET', job, 'status', 'failed', 'error', err, 'finished_at', now)
  redis.call('HDEL', job, 'worker')
  close_job(job, id, ttl, now, idem, callback, owner, notify, unfinished_drop)
  redis.call('LPUSH', dead, id)
  ended[#ended + 1] = id
end

local dead_workers = redis.call('ZRANGEBYSCORE', workers, '-inf', now, 'LIMIT', 0, 100)
-- The suspect group of the i-th of n held jobs: its half of the batch, or "1" (alone) for a half of one.
local function half_group(dead_wid, i, n)
  local half = math.ceil(n / 2)
  local size = i <= half and half or n - half
  if size == 1 then return '1' end
  return dead_wid .. '/' .. now .. (i <= half and '/a' or '/b')
end

for _, dead_wid in ipairs(dead_workers) do
  local processing = processing_prefix .. dead_wid
  local held = {}  -- the jobs it was running, newest first
  for _, id in ipairs(redis.call('LRANGE', processing, 0, -1)) do
    local job = job_prefix .. id
    local status, attempts, worker, priority, owner, callback, idem = unpack(redis.call('HMGET', job,
      'status', 'attempts', 'worker', 'priority', 'owner', 'callback_url', 'idem'))
    local pending = pending_lists[priority] or pending_lists.normal
    if status == 'processing' and worker == dead_wid then
      redis.call('ZREM', inflight, id)
      held[#held + 1] = {id = id, job = job, attempts = tonumber(attempts), pending = pending, owner = owner,
        callback = callback, idem = idem}
    elseif status == 'pending' and not redis.call('HGET', job, 'worker') then
      -- moved by the worker's blocking wait but never started
      redis.call('RPUSH', pending, id)
      requeued = requeued + 1
    end
  end
  local n = #held
  for i, h in ipairs(held) do
    if n == 1 and h.attempts >= max_attempts then
      fail(h.job, h.id, 'worker lost while processing, ' .. h.attempts .. ' attempts', h.owner, h.callback, h.idem)
      failed = failed + 1
    else
      redis.call('HSET', h.job, 'status', 'pending', 'suspect', half_group(dead_wid, i, n), 'requeued_at', now)
      if n > 1 then redis.call('HSET', h.job, 'attempts', h.attempts - 1) end
      redis.call('HDEL', h.job, 'worker')
      redis.call('RPUSH', h.pending, h.id)
      back[#back + 1] = h.id
      requeued = requeued + 1
    end
  end
  redis.call('DEL', processing)
  redis.call('ZREM', workers, dead_wid)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, 1000)) do
  local job = job_prefix .. id
  redis.call('ZREM', inflight, id)
  local status, owner, callback, idem, worker = unpack(redis.call('HMGET', job, 'status', 'owner', 'callback_url', 'idem', 'worker'))
  if status == 'processing' then
    -- The stuck worker's list must not keep the id: once the job is retried (pending again), a stale
    -- copy there would be pushed a second time by its recovery or its drain's release.
    if worker then redis.call('LREM', processing_prefix .. worker, -1, id) end
    fail(job, id, 'exceeded its deadline (JOB_TIMEOUT_SECONDS) and its worker did not answer', owner, callback, idem)
    timed_out = timed_out + 1
  end
end

if failed + timed_out > 0 then redis.call('LTRIM', dead, 0, max_dead - 1) end
drop_unfinished(principal_prefix, unfinished_drop)
if requeued > 0 then redis.call('HINCRBY', stats, 'recovered', requeued) end
if failed + timed_out > 0 then redis.call('HINCRBY', stats, 'failed', failed + timed_out) end
if #ended > 0 then redis.call('PUBLISH', events, 'ended ' .. table.concat(ended, ' ')) end
if #back > 0 then redis.call('PUBLISH', events, 'pending ' .. table.concat(back, ' ')) end
return {requeued, failed, timed_out, #dead_workers}
