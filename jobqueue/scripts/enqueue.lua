--[[
enqueue: create a job record and put its id on its model's pending list for its priority, atomically.

Safe to run twice with the same job id (a reply lost to a dropped connection is retried): the second
run finds the record and answers as a replay. Refusals write nothing.

KEYS[1] pending    LIST   ids waiting to start (KEDA reads its length)
KEYS[2] job        HASH   the new job's record
KEYS[3] idem       STRING idempotency key -> job id, scoped per principal (used when ARGV[9] == "1")
KEYS[4] stats      HASH   the model's counters
KEYS[5] principal  HASH   the owner's token bucket (tokens, at) and unfinished-job count
ARGV[1]  job id
ARGV[2]  input payload (JSON)
ARGV[3]  model name
ARGV[4]  priority
ARGV[5]  owner (principal name)
ARGV[6]  callback url ("" = none)
ARGV[7]  fingerprint of the request (a replay with another body is a conflict)
ARGV[8]  max pending length of this list (0 = unbounded)
ARGV[9]  "1" when an idempotency key was given
ARGV[10] submits per second per principal (0 = unlimited)
ARGV[11] token bucket size
ARGV[12] max unfinished jobs per principal (0 = unlimited)
ARGV[13] job key prefix (an idempotent replay reads the job the key points to)
Returns {code, job id or "", detail}: 1 created; 2 replay (detail: its current status);
-2 queue full; -3 rate limited (detail: retry after, ms); -4 too many unfinished jobs;
-5 idempotency conflict (detail: the existing job id).
]]
local pending, job, idem, stats, principal = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_id, input, model, priority, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local callback, fingerprint = ARGV[6], ARGV[7]
local max_len, use_idem = tonumber(ARGV[8]), ARGV[9] == '1'
local rate, burst, max_unfinished = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local job_prefix = ARGV[13]

-- The same job id again: our own earlier run whose reply was lost.
local status = redis.call('HGET', job, 'status')
if status then return {1, job_id, status} end

if use_idem then
  local existing = redis.call('GET', idem)
  if existing then
    local existing_status, existing_print = unpack(redis.call('HMGET', job_prefix .. existing, 'status', 'fingerprint'))
    if existing_status then
      if existing_print ~= fingerprint then return {-5, existing, 'conflict'} end
      return {2, existing, existing_status}
    end
    -- the key outlived its job's record: a new job takes it over
  end
end

if max_len > 0 and redis.call('LLEN', pending) >= max_len then return {-2, '', ''} end

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local bucket_tokens, bucket_at, unfinished = unpack(redis.call('HMGET', principal, 'tokens', 'at', 'unfinished'))
if max_unfinished > 0 and tonumber(unfinished or 0) >= max_unfinished then return {-4, '', ''} end
if rate > 0 then
  local tokens = tonumber(bucket_tokens or burst)
  local elapsed = now - tonumber(bucket_at or now)
  tokens = math.min(burst, tokens + elapsed * rate / 1000)
  if tokens < 1 then return {-3, '', tostring(math.ceil((1 - tokens) * 1000 / rate))} end
  redis.call('HSET', principal, 'tokens', tostring(tokens - 1), 'at', now)
end

redis.call('HSET', job, 'status', 'pending', 'input', input, 'model', model, 'priority', priority,
  'owner', owner, 'fingerprint', fingerprint, 'created_at', now, 'queued_at', now, 'attempts', 0)
if callback ~= '' then redis.call('HSET', job, 'callback_url', callback) end
-- No TTL while the job lives: a record expires only once it is finished.
if use_idem then
  redis.call('SET', idem, job_id)
  redis.call('HSET', job, 'idem', idem)
end
redis.call('HINCRBY', principal, 'unfinished', 1)
redis.call('LPUSH', pending, job_id)
redis.call('HINCRBY', stats, 'enqueued', 1)
return {1, job_id, 'pending'}
