--[[
claim: start up to N pending jobs of one model for one worker, highest priority first without
starving the others, and hold them in the worker's processing list until `finish` acknowledges them.

Fair share: slots are dealt from a repeating pattern of 12 (8 high, 3 normal, 1 low) driven by a
cursor in the stats hash; slots whose list is empty go to the highest non-empty list. Under sustained
load on all three lists, normal gets at least 1/4 and low at least 1/12 of the jobs started.

Suspects (jobs whose earlier batch died with its worker, or hung) carry a suspect group: the half of
that batch they were put in (`recover`, `finish`'s isolate). A suspect starts only as the first job of
a batch, and then only members of its group join it (group "1": it runs alone); anything else goes back
to the head of its list. Halving the batch that died each time isolates a job that crashes or hangs
the model in O(log n) model calls, while the innocent halves complete in one call each.

Ids passed in ARGV (moved there by the blocking wait, or adopted after a lost reply) are only acted on
when they really are in this worker's processing list.

Paused: nothing starts. Pending ids the worker holds (its blocking wait may have moved one just after
the pause, while it was already blocked) go back to the head of their list, in their order.

KEYS[1] pending high    LIST
KEYS[2] pending normal  LIST
KEYS[3] pending low     LIST
KEYS[4] processing      LIST  this worker's held ids (newest at the head)
KEYS[5] inflight        ZSET  job id -> backstop deadline, ms
KEYS[6] workers         ZSET  worker id -> heartbeat deadline, ms
KEYS[7] stats           HASH  counters, scheduling cursor, outage grace mark
KEYS[8] paused          STRING present while the model's queue is paused
KEYS[9] notify          ZSET  webhook outbox (an expired job with a callback)
ARGV[1]  worker id
ARGV[2]  max ids to take from the pending lists
ARGV[3]  job key prefix
ARGV[4]  request ttl, ms (0 = never expires)
ARGV[5]  backstop deadline, ms after start (recovery fails a job still running then)
ARGV[6]  worker ttl, ms (claiming also counts as a heartbeat)
ARGV[7]  events channel
ARGV[8]  jobs this worker already holds for the batch being collected (a suspect must not join them)
ARGV[9]  model version of this worker (recorded on each job it starts)
ARGV[10] job ttl, seconds (an expired record lives this long)
ARGV[11] principal key prefix
ARGV[12] "1": the worker traces (each job also carries its traceparent and wait start), "0": it does not
ARGV[13..] ids already in the processing list to start or adopt
Returns {flags, then for each job: id, attempts, input, priority, created_at, queued_at, started_at}, traced:
each job's row also ends with its traceparent ("" when none) and wait start (requeued_at or queued_at, ms);
flags: 1 = paused, 2 = a suspect group started (the worker must not add to this batch). The timings are
what the worker's latency histograms need once `finish` ends the job (it reads them no more).
]]
local pending_lists = {KEYS[1], KEYS[2], KEYS[3]}
local processing, inflight, workers, stats, paused, notify = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local wid, want, job_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local request_ttl, backstop, worker_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local events, already_held, version = ARGV[7], tonumber(ARGV[8]), ARGV[9]
local job_ttl, principal_prefix, traced = ARGV[10], ARGV[11], ARGV[12] == '1'
local priority_index = {high = 1, normal = 2, low = 3}
local PRIORITIES = {'high', 'normal', 'low'}  -- by pending list index
local PATTERN = {1, 1, 2, 1, 1, 2, 1, 1, 3, 1, 2, 1}
local SKIPLIST_MEMBER = string.rep('~', 200)  -- never a job id (see the ZADD below)

local now = now_ms()
local now_text = tostring(now)  -- formatted once: Redis formats a number argument with a costly snprintf
local deadline = tostring(now + backstop)  -- of each job started here
beat(workers, stats, wid, worker_ttl, now)  -- claiming is a heartbeat too

-- candidates: their ids and, at the same index, the pending list each came from (0: already in the
-- processing list)
local candidates, sources = {}, {}
for i = 13, #ARGV do
  if redis.call('LPOS', processing, ARGV[i]) then
    candidates[#candidates + 1] = ARGV[i]
    sources[#candidates] = 0
  end
end
local is_paused = redis.call('EXISTS', paused) == 1
if want > 0 and not is_paused then
  local cursor = redis.call('HINCRBY', stats, 'cursor', want) - want
  local quota = {0, 0, 0}
  for i = 0, want - 1 do
    local p = PATTERN[(cursor + i) % 12 + 1]
    quota[p] = quota[p] + 1
  end
  local left = want
  local function take(p, n)  -- the oldest n ids of list p become candidates
    if n <= 0 then return end
    local popped = redis.call('RPOP', pending_lists[p], n)
    if popped then
      local base = #candidates
      for i, id in ipairs(popped) do
        candidates[base + i] = id
        sources[base + i] = p
      end
      left = left - #popped
    end
  end
  for p = 1, 3 do take(p, quota[p]) end
  for p = 1, 3 do take(p, left) end  -- slots of empty lists go to the highest non-empty one
end

-- Each field read costs a scan of the record (a ziplist), a missing one the whole record: only what
-- every job needs is read here; what only a rare path needs is read on that path.
local fields = {'status', 'attempts', 'input', 'suspect', 'started_at', 'queued_at', 'created_at'}
if traced then fields[8], fields[9] = 'traceparent', 'requeued_at' end
local out, out_n = {0}, 1
local started, ended, deadlines = {}, {}, {}
-- attempts -> the next attempt, both as text: no number parsed or formatted per job
local attempt_after = setmetatable({}, {__index = function(cache, attempts)
  local next_attempt = tostring(tonumber(attempts) + 1)
  cache[attempts] = next_attempt
  return next_attempt
end})
local function reply_job(id, attempts, input, priority, created_at, queued_at, started_at, traceparent, wait_start)
  out[out_n + 1], out[out_n + 2], out[out_n + 3], out[out_n + 4] = id, attempts, input, priority or 'normal'
  out[out_n + 5], out[out_n + 6], out[out_n + 7] = created_at or 0, queued_at or 0, started_at  -- a nil ends a reply
  out_n = out_n + 7
  if traced then
    out[out_n + 1], out[out_n + 2] = traceparent or '', wait_start
    out_n = out_n + 2
  end
end
local give_back = {}  -- indexes in candidates of the ids not started
local taken = {}  -- started ids not yet in the processing list: pushed there in one go below
local unfinished_drop = {}
local group = nil  -- the suspect group this batch runs: only its members join ("1": nobody)
if is_paused then out[1] = 1 end
for c, id in ipairs(candidates) do
  local source = sources[c]
  local job = job_prefix .. id
  local status, attempts, input, suspect, started_at, queued_at, created_at, traceparent, requeued_at =
    unpack(redis.call('HMGET', job, unpack(fields)))
  local wait_start = requeued_at or queued_at or 0
  local held = source == 0
  if status == 'processing' and held and redis.call('HGET', job, 'worker') == wid then
    -- Already ours: a reply lost to a dropped connection. Adopt it again, unchanged.
    reply_job(id, attempts, input, redis.call('HGET', job, 'priority'), created_at, queued_at, started_at,
      traceparent, wait_start)
  elseif status == 'pending' and (is_paused or (group and (group == '1' or suspect ~= group))) then
    give_back[#give_back + 1] = c
  elseif status == 'pending' then
    -- "Not started" means never started: a job released by a drain or isolated after a hung batch
    -- has its attempt uncounted (attempts 0) but did start; it must run, however old it now is.
    if not started_at and request_ttl > 0 and now - tonumber(queued_at) > request_ttl then
      local owner, callback, idem = unpack(redis.call('HMGET', job, 'owner', 'callback_url', 'idem'))
      redis.call('HSET', job, 'status', 'expired', 'finished_at', now_text, 'error', 'not started within REQUEST_TTL_SECONDS')
      close_job(job, id, job_ttl, now_text, idem, callback, owner, notify, unfinished_drop)
      redis.call('HINCRBY', stats, 'expired', 1)
      ended[#ended + 1] = id
      if held then redis.call('LREM', processing, -1, id) end
    elseif suspect and suspect ~= group and (already_held > 0 or out_n > 1) then
      give_back[#give_back + 1] = c  -- starts its own batch later
    else
      local attempt = attempt_after[attempts]
      redis.call('HSET', job, 'status', 'processing', 'started_at', now_text, 'worker', wid, 'attempts', attempt,
        'model_version', version)
      local n = #started + 1
      started[n], deadlines[2 * n - 1], deadlines[2 * n] = id, deadline, id
      if not held then taken[#taken + 1] = id end
      -- the list it came from is its priority; an id the worker moved in itself has it read
      local priority = PRIORITIES[source] or redis.call('HGET', job, 'priority')
      reply_job(id, attempt, input, priority, created_at, queued_at, now_text, traceparent, wait_start)
      if suspect and not group then
        group = suspect
        out[1] = out[1] + 2
      end
    end
  elseif held then
    -- Not ours to run (gone, canceled, finished, another worker's): stop holding it.
    redis.call('LREM', processing, -1, id)
  end
end

-- Ids not started go back to the head of the list they came from, in their order.
for i = #give_back, 1, -1 do
  local id, source = candidates[give_back[i]], sources[give_back[i]]
  if source == 0 then
    redis.call('LREM', processing, -1, id)
    local priority = redis.call('HGET', job_prefix .. id, 'priority') or 'normal'
    redis.call('RPUSH', pending_lists[priority_index[priority] or 2], id)
  else
    redis.call('RPUSH', pending_lists[source], id)
  end
end
drop_unfinished(principal_prefix, unfinished_drop)
for i = 1, #taken, 1000 do
  redis.call('LPUSH', processing, unpack(taken, i, math.min(i + 999, #taken)))
end
-- One ZADD per 500 jobs rather than one per job (and within Lua's unpack limit). Its first member, longer
-- than zset-max-ziplist-value (64 by default) and removed again at once, makes the set a skiplist: Redis
-- keeps a set of up to 128 short members as a ziplist (listpack), where every insert and removal scans the
-- whole set; at 128 jobs a batch that made this ZADD and finish's ZREM ~9 us per job, a fifth of the total.
for i = 1, #deadlines, 1000 do
  redis.call('ZADD', inflight, deadlines[i], SKIPLIST_MEMBER, unpack(deadlines, i, math.min(i + 999, #deadlines)))
end
if #deadlines > 0 then redis.call('ZREM', inflight, SKIPLIST_MEMBER) end
if #started > 0 then redis.call('PUBLISH', events, 'processing ' .. table.concat(started, ' ')) end
if #ended > 0 then redis.call('PUBLISH', events, 'ended ' .. table.concat(ended, ' ')) end
return out
