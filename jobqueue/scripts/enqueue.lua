--[[
enqueue: create a job record and put its id on the pending list, atomically.

KEYS[1] pending   LIST   ids waiting to start (KEDA reads its length)
KEYS[2] job       HASH   the new job's record
KEYS[3] idem      STRING idempotency key -> job id (only touched when ARGV[5] == "1")
KEYS[4] stats     HASH   counters
ARGV[1] job id
ARGV[2] input payload (JSON)
ARGV[3] job ttl, seconds
ARGV[4] max pending length (0 = unbounded)
ARGV[5] "1" when an idempotency key was given
Returns {code, job id}: 1 created, 2 replay of an earlier submit with the same key, -2 queue full.
]]
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {2, existing} end
end
local max_len = tonumber(ARGV[4])
if max_len > 0 and redis.call('LLEN', KEYS[1]) >= max_len then return {-2, ''} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[2], 'status', 'pending', 'input', ARGV[2], 'created_at', now, 'queued_at', now, 'attempts', 0)
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[5] == '1' then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3]) end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'enqueued', 1)
return {1, ARGV[1]}
