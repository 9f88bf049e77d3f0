--[[
claim: move up to N ids from the pending list into this worker's processing list and start them.

The ids stay in the worker's processing list until `finish` acknowledges them, so a job is never held
only in a worker's memory. Ids already moved there by BLMOVE (the blocking wait) are passed in ARGV.
Ids whose record is gone or no longer pending (canceled, finished by an earlier run) are dropped;
pending ids older than the request ttl end as `expired`.

KEYS[1] pending     LIST  ids waiting to start
KEYS[2] processing  LIST  this worker's held ids (newest at the head)
KEYS[3] inflight    ZSET  job id -> timeout deadline, ms
KEYS[4] workers     ZSET  worker id -> heartbeat deadline, ms
KEYS[5] stats       HASH  counters
ARGV[1] worker id
ARGV[2] max ids to take from the pending list
ARGV[3] key prefix (job records are <prefix>job:<id>; same hash tag as KEYS)
ARGV[4] request ttl, ms (0 = never expires)
ARGV[5] job timeout, ms
ARGV[6] worker ttl, ms (claiming also counts as a heartbeat)
ARGV[7] events channel
ARGV[8..] ids already in the processing list (oldest first): moved by BLMOVE, or claimed earlier
          by this worker whose reply was lost (those are adopted as they are)
Returns a flat array: id, attempts, input, id, attempts, input, ...
]]
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local wid, prefix = ARGV[1], ARGV[3]
local request_ttl, timeout = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), wid)

local ids = {}
for i = 8, #ARGV do ids[#ids + 1] = ARGV[i] end
local n = tonumber(ARGV[2])
if n > 0 then
  local popped = redis.call('RPOP', KEYS[1], n)
  if popped then
    redis.call('LPUSH', KEYS[2], unpack(popped))
    for _, id in ipairs(popped) do ids[#ids + 1] = id end
  end
end

local out, ended, deadlines = {}, {}, {}
for _, id in ipairs(ids) do
  local job = prefix .. 'job:' .. id
  local f = redis.call('HMGET', job, 'status', 'queued_at', 'attempts', 'input', 'worker')
  local start = false
  if f[1] == 'pending' then
    if request_ttl > 0 and now - tonumber(f[2]) > request_ttl then
      redis.call('HSET', job, 'status', 'expired', 'finished_at', now,
        'error', 'not started within REQUEST_TTL_SECONDS')
      redis.call('HINCRBY', KEYS[5], 'expired', 1)
      ended[#ended + 1] = id
    else
      start = true
    end
  end
  if f[1] == 'processing' and f[5] == wid then
    -- Already ours: a reply lost to a dropped connection. Adopt it again, unchanged.
    out[#out + 1] = id
    out[#out + 1] = tonumber(f[3])
    out[#out + 1] = f[4]
  elseif start then
    local attempts = tonumber(f[3]) + 1
    redis.call('HSET', job, 'status', 'processing', 'started_at', now, 'worker', wid, 'attempts', attempts)
    deadlines[#deadlines + 1] = now + timeout
    deadlines[#deadlines + 1] = id
    out[#out + 1] = id
    out[#out + 1] = attempts
    out[#out + 1] = f[4]
  else
    -- Not ours to run (gone, canceled, already finished, expired): stop holding it.
    redis.call('LREM', KEYS[2], -1, id)
  end
end
-- one ZADD per 500 jobs rather than one per job (and within Lua's unpack limit)
for i = 1, #deadlines, 1000 do
  redis.call('ZADD', KEYS[3], unpack(deadlines, i, math.min(i + 999, #deadlines)))
end
if #ended > 0 then redis.call('PUBLISH', ARGV[7], table.concat(ended, ' ')) end
return out
