--[[
retry: put a failed or expired job back on its pending list with a fresh attempt count.
Each retry request carries a token: running the same request twice (a lost reply retried) finds
its own token on a pending job and answers as done instead of "wrong state".

KEYS[1] job        HASH
KEYS[2] pending    LIST   the job's model and priority
KEYS[3] dead       LIST   its model's dead letters
KEYS[4] stats      HASH   its model's counters
ARGV[1] job id
ARGV[2] max pending length (0 = unbounded)
ARGV[3] retry token (unique per request)
ARGV[4] events channel
ARGV[5] principal key prefix
Returns {1, "pending"} requeued, {0, status} not retryable, {-1, ""} no such job, {-2, ""} queue full.
]]
local job, pending, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, max_len, token, events, principal_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]

local status, last_token, owner, idem = unpack(redis.call('HMGET', job, 'status', 'retry_token', 'owner', 'idem'))
if not status then return {-1, ''} end
if status == 'pending' and last_token == token then return {1, 'pending'} end
if status ~= 'failed' and status ~= 'expired' then return {0, status} end
if max_len > 0 and redis.call('LLEN', pending) >= max_len then return {-2, ''} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', job, 'status', 'pending', 'attempts', 0, 'queued_at', now, 'retry_token', token)
redis.call('HDEL', job, 'error', 'result', 'started_at', 'finished_at', 'worker', 'suspect',
  'notify_state', 'notify_attempts', 'notify_last_status', 'notify_last_error')
-- live again: neither the record nor its idempotency key may expire under it
redis.call('PERSIST', job)
if idem then redis.call('PERSIST', idem) end
if owner then redis.call('HINCRBY', principal_prefix .. owner, 'unfinished', 1) end
redis.call('LREM', dead, 1, job_id)
redis.call('LPUSH', pending, job_id)
redis.call('HINCRBY', stats, 'retried', 1)
redis.call('PUBLISH', events, 'pending ' .. job_id)
return {1, 'pending'}
