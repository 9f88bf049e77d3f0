--[[
cancel: end a pending job as `canceled`. A worker that already moved the id skips it at claim.
Canceling a job that is already canceled answers as done (a lost reply retried is not a failure).

KEYS[1] job        HASH
KEYS[2] pending    LIST   the list the job waits in (its model and priority)
KEYS[3] stats      HASH   its model's counters
KEYS[4] notify     ZSET   webhook outbox
ARGV[1] job id
ARGV[2] job ttl, seconds
ARGV[3] events channel
ARGV[4] principal key prefix
Returns {1, "canceled"} done, {0, status} not pending (nothing changed), {-1, ""} no such job.
]]
local job, pending, stats, notify = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, ttl, events, principal_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local status, owner, callback, idem = unpack(redis.call('HMGET', job, 'status', 'owner', 'callback_url', 'idem'))
if not status then return {-1, ''} end
if status == 'canceled' then return {1, 'canceled'} end
if status ~= 'pending' then return {0, status} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', job, 'status', 'canceled', 'finished_at', now)
redis.call('EXPIRE', job, ttl)
if idem then redis.call('EXPIRE', idem, ttl) end
if callback then
  redis.call('HSET', job, 'notify_state', 'pending', 'notify_attempts', 0)
  redis.call('HDEL', job, 'notify_last_status', 'notify_last_error')
  redis.call('ZADD', notify, 'NX', now, job_id)
end
if owner then redis.call('HINCRBY', principal_prefix .. owner, 'unfinished', -1) end
redis.call('LREM', pending, 1, job_id)
redis.call('HINCRBY', stats, 'canceled', 1)
redis.call('PUBLISH', events, 'ended ' .. job_id)
return {1, 'canceled'}
