--[[
retry: put a failed or expired job back on its pending list with a fresh attempt count. A retry counts
like a submit: the owner's unfinished-jobs limit and rate limit apply, and a refusal writes nothing.

Each retry request carries a token. The retry stores it on the job with the job's generation (how many
retries it has had), so running the same request again (a lost reply retried) answers as the first run
did, whatever the job went through since (started, completed, failed again, retried by another
request), and never applies twice. The tokens live and expire with the job's record.

KEYS[1] job        HASH   the job's record; field "retry:<token>" -> the generation that token made
KEYS[2] pending    LIST   the job's model and priority
KEYS[3] dead       LIST   its model's dead letters
KEYS[4] stats      HASH   its model's counters
KEYS[5] principal  HASH   the owner's token bucket (tokens, at) and unfinished-job count
ARGV[1] job id
ARGV[2] max pending length (0 = unbounded)
ARGV[3] retry token (unique per request)
ARGV[4] events channel
ARGV[5] retries per second per principal, shared with submits (0 = unlimited)
ARGV[6] token bucket size
ARGV[7] max unfinished jobs per principal (0 = unlimited)
Returns {1, "pending", generation} requeued, {2, status, generation} this token's retry already ran (status:
the job's now), {0, status, ""} not retryable, {-1, "", ""} no such job, {-2, "", ""} queue full,
{-3, retry after ms, ""} rate limited, {-4, "", ""} too many unfinished jobs.
]]
local job, pending, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, max_len, token, events = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local q = {principal = KEYS[5], rate = tonumber(ARGV[5]), burst = tonumber(ARGV[6]), max_unfinished = tonumber(ARGV[7])}
local token_field = 'retry:' .. token

local status, applied, owner, idem = unpack(redis.call('HMGET', job, 'status', token_field, 'owner', 'idem'))
if not status then return {-1, '', ''} end
if applied then return {2, status, applied} end
if status ~= 'failed' and status ~= 'expired' then return {0, status, ''} end
if max_len > 0 and redis.call('LLEN', pending) >= max_len then return {-2, '', ''} end
local now = now_ms()
if owner then
  local refused = admit(q, now)
  if refused then return {refused[1], refused[2], ''} end
end
local generation = redis.call('HINCRBY', job, 'retries', 1)
redis.call('HSET', job, 'status', 'pending', 'attempts', 0, 'queued_at', now, token_field, generation)
redis.call('HDEL', job, 'error', 'result', 'started_at', 'finished_at', 'worker', 'suspect',
  'notify_state', 'notify_attempts', 'notify_last_status', 'notify_last_error')
-- live again: neither the record nor its idempotency key may expire under it
redis.call('PERSIST', job)
if idem then redis.call('PERSIST', idem) end
if owner then redis.call('HINCRBY', q.principal, 'unfinished', 1) end
redis.call('LREM', dead, 1, job_id)
redis.call('LPUSH', pending, job_id)
redis.call('HINCRBY', stats, 'retried', 1)
redis.call('PUBLISH', events, 'pending ' .. job_id)
return {1, 'pending', generation}
