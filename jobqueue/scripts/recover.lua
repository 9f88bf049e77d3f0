--[[
recover: give dead workers' jobs back to the queue and fail jobs past their timeout.

Runs at most once per interval across all workers (a lock key with a TTL), like bullmq's stalled
checker. A worker is dead when its heartbeat deadline has passed. Its processing list is walked head
(newest) to tail (oldest) and each id RPUSHed, so the oldest ends next in line: FIFO is kept.

KEYS[1] workers  ZSET   worker id -> heartbeat deadline, ms
KEYS[2] pending  LIST   ids waiting to start
KEYS[3] inflight ZSET   job id -> timeout deadline, ms
KEYS[4] dead     LIST   dead-lettered ids
KEYS[5] lock     STRING recovery lock
KEYS[6] stats    HASH   counters
ARGV[1] caller's worker id (lock owner)
ARGV[2] lock ttl, ms (the recovery interval)
ARGV[3] key prefix
ARGV[4] max attempts
ARGV[5] job ttl, seconds
ARGV[6] events channel
Returns {requeued, failed, timed_out, dead_workers}, or {-1} when another worker holds the lock.
]]
if not redis.call('SET', KEYS[5], ARGV[1], 'NX', 'PX', ARGV[2]) then return {-1} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local prefix, ttl = ARGV[3], ARGV[5]
local max_attempts = tonumber(ARGV[4])
local requeued, failed, timed_out = 0, 0, 0
local ended = {}

local function fail(job, id, err)
  redis.call('HSET', job, 'status', 'failed', 'error', err, 'finished_at', now)
  redis.call('EXPIRE', job, ttl)
  redis.call('LPUSH', KEYS[4], id)
  ended[#ended + 1] = id
end

local dead_workers = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
for _, wid in ipairs(dead_workers) do
  local processing = prefix .. 'processing:' .. wid
  for _, id in ipairs(redis.call('LRANGE', processing, 0, -1)) do
    local job = prefix .. 'job:' .. id
    local f = redis.call('HMGET', job, 'status', 'attempts')
    if f[1] == 'processing' then
      redis.call('ZREM', KEYS[3], id)
      if tonumber(f[2]) >= max_attempts then
        fail(job, id, 'worker lost while processing, ' .. f[2] .. ' attempts')
        failed = failed + 1
      else
        redis.call('HSET', job, 'status', 'pending')
        redis.call('HDEL', job, 'worker')
        redis.call('RPUSH', KEYS[2], id)
        requeued = requeued + 1
      end
    elseif f[1] == 'pending' then
      -- moved by the worker's blocking wait but never started
      redis.call('RPUSH', KEYS[2], id)
      requeued = requeued + 1
    end
  end
  redis.call('DEL', processing)
  redis.call('ZREM', KEYS[1], wid)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)) do
  local job = prefix .. 'job:' .. id
  redis.call('ZREM', KEYS[3], id)
  if redis.call('HGET', job, 'status') == 'processing' then
    fail(job, id, 'exceeded JOB_TIMEOUT_SECONDS')
    timed_out = timed_out + 1
  end
end

if requeued > 0 then redis.call('HINCRBY', KEYS[6], 'recovered', requeued) end
if failed + timed_out > 0 then redis.call('HINCRBY', KEYS[6], 'failed', failed + timed_out) end
if #ended > 0 then redis.call('PUBLISH', ARGV[6], table.concat(ended, ' ')) end
return {requeued, failed, timed_out, #dead_workers}
