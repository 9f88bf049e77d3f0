--[[
finish: record the outcome of jobs a worker held, and stop holding them. First result wins.

A result is written only while the job is not terminal, so a job re-run after recovery never ends with
two results, and a completed job never flips back (exactly-once results over at-least-once runs).
Running the same call twice (a lost reply retried) changes nothing the second time.

KEYS[1] processing     LIST  this worker's held ids
KEYS[2] inflight       ZSET  job id -> backstop deadline
KEYS[3] dead           LIST  dead-lettered ids (bounded)
KEYS[4] stats          HASH  counters
KEYS[5] notify         ZSET  webhook outbox: job id -> when due
KEYS[6] pending high   LIST
KEYS[7] pending normal LIST
KEYS[8] pending low    LIST
ARGV[1] worker id
ARGV[2] job key prefix
ARGV[3] job ttl, seconds (a finished record lives this long)
ARGV[4] max attempts
ARGV[5] events channel
ARGV[6] max dead letters kept
ARGV[7] principal key prefix
ARGV[8..] quads: id, outcome, payload, the run the outcome is for (its started_at as claim wrote it; "": any)
  "completed": payload is the result JSON, or the s3://bucket/key of a result object (issue #26)
  "failed":    payload is the error; permanent (the input does not fit the model, it hung alone)
  "retry":     payload is the error; requeued at the front until max attempts, then failed
  "release":   not run (drain, second signal); requeued at the front, the attempt not counted;
               only ids still in this worker's list, so nothing is queued twice
  "isolate":   its batch crashed or hung; requeued at the front as a suspect, the attempt not counted;
               payload is its suspect group (the half of the batch it runs with next; "" or "1": alone)
  A requeuing outcome (retry, release, isolate) applies only to the run it is for: sent again after a lost
  reply, once a claim has started the job again, it must not requeue that new run (nor count twice). A
  run is told by its start (started_at, ms): attempts do not tell runs apart (release and isolate give the
  attempt back).
Returns {completed, failed, requeued, ignored, still held, now, then the id of each job this call ended} (the
worker's latency histograms take these jobs' timings from the claim that started them, or from the records
for ids no claim of the worker's process read: WorkerQueue.ended_timings); still held > 0
means ids this worker does not know it holds (a reply lost to a dropped connection): it adopts them with
`claim`.
]]
local processing, inflight, dead, stats, notify = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pending_lists = {high = KEYS[6], normal = KEYS[7], low = KEYS[8]}
local wid, job_prefix, ttl = ARGV[1], ARGV[2], ARGV[3]
local max_attempts, events, max_dead, principal_prefix = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7]

local now = now_ms()
local now_text = tostring(now)  -- formatted once: Redis formats a number argument with a costly snprintf
local completed, failed, requeued, ignored = 0, 0, 0, 0
local ended, back, done = {}, {}, {}  -- done: ids to drop from the in-flight set
local unfinished_drop = {}

local function close(job, id, owner, callback, idem)
  close_job(job, id, ttl, now_text, idem, callback, owner, notify, unfinished_drop)
  ended[#ended + 1] = id
end

local function fail(job, id, err, owner, callback, idem)
  redis.call('HSET', job, 'status', 'failed', 'error', err, 'finished_at', now_text)
  redis.call('LPUSH', dead, id)
  close(job, id, owner, callback, idem)
  failed = failed + 1
end

local front = {}  -- per pending list: ids going back to its head, oldest first
local function requeue(job, id, priority)
  redis.call('HDEL', job, 'worker')
  redis.call('HSET', job, 'requeued_at', now_text)  -- its next attempt's wait starts here (queued_at stays the first)
  local list = pending_lists[priority] or pending_lists.normal
  front[list] = front[list] or {}
  table.insert(front[list], id)
  back[#back + 1] = id
  requeued = requeued + 1
end

-- The ids this call is sent leave the processing list as one `LREM processing -1 id` each would take them
-- (the occurrence nearest the tail first), from one read of the list and one write.
-- tail_most: id -> index of its occurrence nearest the tail; closer: index -> the next occurrence of the
-- same id towards the head (only for an id held twice). A removed entry becomes false.
local holding = redis.call('LRANGE', processing, 0, -1)  -- newest first
local tail_most, closer, dropped = {}, {}, 0
for i, id in ipairs(holding) do
  local previous = tail_most[id]
  if previous then closer[i] = previous end
  tail_most[id] = i
end
local held_ids = {}  -- per quad (by its ARGV index): whether the id was held
local stale = {}  -- per quad: a requeuing outcome for an earlier run (the id stays held: a later run's)
local requeuing = {retry = true, release = true, isolate = true}
for i = 8, #ARGV, 4 do
  if requeuing[ARGV[i + 1]] and ARGV[i + 3] ~= '' then
    stale[i] = redis.call('HGET', job_prefix .. ARGV[i], 'started_at') ~= ARGV[i + 3]
  end
  local at = not stale[i] and tail_most[ARGV[i]]
  if at then
    tail_most[ARGV[i]] = closer[at]
    holding[at] = false
    dropped = dropped + 1
    held_ids[i] = true
  end
end
-- Written first, before any result: over maxmemory Redis refuses a command that may grow memory (HSET) as
-- a script's first write, but not after one that frees memory or changes nothing (DEL, LTRIM). A finish
-- must record its results even then: ending jobs is what lets the memory go.
local still_held = #holding - dropped
local tail_only = true  -- the usual case: the oldest ids leave, an LTRIM keeps the rest
for i = still_held + 1, #holding do
  if holding[i] then tail_only = false break end
end
if still_held == 0 and dropped > 0 then
  redis.call('DEL', processing)
elseif tail_only then
  redis.call('LTRIM', processing, 0, still_held - 1)  -- all of it when nothing was held: changes nothing
else
  local rest = {}
  for _, id in ipairs(holding) do
    if id then rest[#rest + 1] = id end
  end
  redis.call('DEL', processing)
  for i = 1, #rest, 1000 do redis.call('RPUSH', processing, unpack(rest, i, math.min(i + 999, #rest))) end
end

for i = 8, #ARGV, 4 do
  local id, outcome, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local job = job_prefix .. id
  local held = held_ids[i] or false
  local status, err, owner, callback, idem = unpack(redis.call('HMGET', job, 'status', 'error', 'owner', 'callback_url', 'idem'))
  local result = outcome == 'completed' or outcome == 'failed'
  -- Who runs it, its attempts and its priority (its pending list) matter only off the usual path (a
  -- result of a job being processed): each field read scans the record, so they are read only here.
  local worker, attempts, priority
  if status == 'pending' or (status == 'processing' and not result) then
    worker, attempts, priority = unpack(redis.call('HMGET', job, 'worker', 'attempts', 'priority'))
  end
  local live = status == 'processing' or status == 'pending'
  local ours = status == 'processing' and worker == wid
  if stale[i] then ours, held = false, false end  -- the outcome of a run that ended: ignored
  -- A result for a job handed back uncounted (a second signal released it while its batch still
  -- ran to the end): the run that made the result is its attempt.
  if result and status == 'pending' then
    if tonumber(attempts or 0) < 1 then redis.call('HSET', job, 'attempts', 1) end
    -- Ending a job that waits in a pending list (handed back uncounted, or its claim lost in a
    -- failover): its id leaves the list too, which holds only jobs waiting to start. It was put
    -- back at the tail, the end claims take from, so the scan from there is short.
    if not held then redis.call('LREM', pending_lists[priority] or pending_lists.normal, -1, id) end
  end
  if outcome == 'completed' and live then
    redis.call('HSET', job, 'status', 'completed', 'result', payload, 'finished_at', now_text)
    if err then redis.call('HDEL', job, 'error') end  -- an earlier attempt's error
    done[#done + 1] = id
    close(job, id, owner, callback, idem)
    completed = completed + 1
  elseif outcome == 'failed' and live then
    done[#done + 1] = id
    fail(job, id, payload, owner, callback, idem)
  elseif outcome == 'retry' and ours then
    done[#done + 1] = id
    if tonumber(attempts) >= max_attempts then
      fail(job, id, 'failed after ' .. attempts .. ' attempts: ' .. payload, owner, callback, idem)
      else
      redis.call('HSET', job, 'status', 'pending', 'error', payload)
      redis.call('HINCRBY', stats, 'retried', 1)
      requeue(job, id, priority)
    end
  elseif (outcome == 'release' or outcome == 'isolate') and held and (ours or status == 'pending') then
    -- 'pending' here: moved by the blocking wait, never started
    if ours then
      done[#done + 1] = id
      redis.call('HSET', job, 'status', 'pending', 'attempts', tonumber(attempts) - 1)
    end
    if outcome == 'isolate' then redis.call('HSET', job, 'suspect', payload ~= '' and payload or '1') end
    requeue(job, id, priority)
  else
    ignored = ignored + 1
  end
end
-- RPUSH newest first, so the oldest ends at the tail: it is the next one claimed (FIFO kept)
for list, ids in pairs(front) do
  for i = #ids, 1, -1 do redis.call('RPUSH', list, ids[i]) end
end
for i = 1, #done, 1000 do
  redis.call('ZREM', inflight, unpack(done, i, math.min(i + 999, #done)))
end
if failed > 0 then redis.call('LTRIM', dead, 0, max_dead - 1) end
drop_unfinished(principal_prefix, unfinished_drop)
if completed > 0 then redis.call('HINCRBY', stats, 'completed', completed) end
if failed > 0 then redis.call('HINCRBY', stats, 'failed', failed) end
if #ended > 0 then redis.call('PUBLISH', events, 'ended ' .. table.concat(ended, ' ')) end
if #back > 0 then redis.call('PUBLISH', events, 'pending ' .. table.concat(back, ' ')) end
local reply = {completed, failed, requeued, ignored, still_held, now}
for i, id in ipairs(ended) do reply[6 + i] = id end
return reply
