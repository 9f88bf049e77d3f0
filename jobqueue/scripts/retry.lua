--[[
retry: put a failed or expired job back on the pending list with a fresh attempt count.

KEYS[1] job      HASH
KEYS[2] pending  LIST
KEYS[3] dead     LIST
ARGV[1] job id
ARGV[2] job ttl, seconds
ARGV[3] max pending length (0 = unbounded)
Returns {1, "pending"} re-queued, {0, status} not retryable, {-1, ""} no such job, {-2, ""} queue full.
]]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1, ''} end
if status ~= 'failed' and status ~= 'expired' then return {0, status} end
local max_len = tonumber(ARGV[3])
if max_len > 0 and redis.call('LLEN', KEYS[2]) >= max_len then return {-2, ''} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'status', 'pending', 'attempts', 0, 'queued_at', now)
redis.call('HDEL', KEYS[1], 'error', 'result', 'started_at', 'finished_at', 'worker')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('LREM', KEYS[3], 1, ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
return {1, 'pending'}
