--[[
finish: record the outcome of jobs a worker held, and stop holding them. First result wins.

A result is written only while the job is not terminal, so a job re-run after recovery never ends with
two results, and a completed job never flips back (exactly-once results over at-least-once runs).

KEYS[1] processing  LIST  this worker's held ids
KEYS[2] inflight    ZSET  job id -> timeout deadline
KEYS[3] pending     LIST  ids waiting to start
KEYS[4] dead        LIST  dead-lettered ids
KEYS[5] stats       HASH  counters
ARGV[1] worker id
ARGV[2] key prefix
ARGV[3] job ttl, seconds (a finished record lives this long)
ARGV[4] max attempts
ARGV[5] events channel
ARGV[6..] triples: id, outcome, payload
  outcome "completed": payload is the result JSON
  outcome "failed":    payload is the error; permanent (e.g. the input does not fit the model)
  outcome "retry":     payload is the error; re-queued at the front until max attempts, then failed
  outcome "release":   not run (drain timed out); re-queued at the front, the attempt not counted;
                      only ids still in this worker's list, so nothing is queued twice
Returns {completed, failed, requeued, ignored, still held}; still held > 0 means ids this worker does
not know it holds (a reply lost to a dropped connection): it adopts them with `claim`.
]]
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local wid, prefix, ttl = ARGV[1], ARGV[2], ARGV[3]
local max_attempts = tonumber(ARGV[4])
local completed, failed, requeued, ignored = 0, 0, 0, 0
local ended, done = {}, {}  -- done: ids to drop from the in-flight set

local function fail(job, id, err)
  redis.call('HSET', job, 'status', 'failed', 'error', err, 'finished_at', now)
  redis.call('EXPIRE', job, ttl)
  redis.call('LPUSH', KEYS[4], id)
  ended[#ended + 1] = id
  failed = failed + 1
end

for i = 6, #ARGV, 3 do
  local id, outcome, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local job = prefix .. 'job:' .. id
  local held = redis.call('LREM', KEYS[1], -1, id) > 0
  local f = redis.call('HMGET', job, 'status', 'worker', 'attempts', 'error')
  local status = f[1]
  local live = status == 'processing' or status == 'pending'
  local ours = status == 'processing' and f[2] == wid
  if outcome == 'completed' and live then
    redis.call('HSET', job, 'status', 'completed', 'result', payload, 'finished_at', now)
    if f[4] then redis.call('HDEL', job, 'error') end  -- an earlier attempt's error
    redis.call('EXPIRE', job, ttl)
    done[#done + 1] = id
    ended[#ended + 1] = id
    completed = completed + 1
  elseif outcome == 'failed' and live then
    done[#done + 1] = id
    fail(job, id, payload)
  elseif outcome == 'retry' and ours then
    done[#done + 1] = id
    if tonumber(f[3]) >= max_attempts then
      fail(job, id, 'failed after ' .. f[3] .. ' attempts: ' .. payload)
    else
      redis.call('HSET', job, 'status', 'pending', 'error', payload)
      redis.call('HDEL', job, 'worker')
      redis.call('RPUSH', KEYS[3], id)
      requeued = requeued + 1
    end
  elseif outcome == 'release' and held and (ours or status == 'pending') then
    -- 'pending' here: moved by the blocking wait, never started
    if ours then
      done[#done + 1] = id
      redis.call('HSET', job, 'status', 'pending', 'attempts', tonumber(f[3]) - 1)
      redis.call('HDEL', job, 'worker')
    end
    redis.call('RPUSH', KEYS[3], id)
    requeued = requeued + 1
  else
    ignored = ignored + 1
  end
end
for i = 1, #done, 1000 do
  redis.call('ZREM', KEYS[2], unpack(done, i, math.min(i + 999, #done)))
end
if completed > 0 then redis.call('HINCRBY', KEYS[5], 'completed', completed) end
if failed > 0 then redis.call('HINCRBY', KEYS[5], 'failed', failed) end
if #ended > 0 then redis.call('PUBLISH', ARGV[5], table.concat(ended, ' ')) end
return {completed, failed, requeued, ignored, redis.call('LLEN', KEYS[1])}
