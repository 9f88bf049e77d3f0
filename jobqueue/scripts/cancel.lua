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
local now = now_ms()
redis.call('HSET', job, 'status', 'canceled', 'finished_at', now)
local unfinished_drop = {}
close_job(job, job_id, ttl, now, idem, callback, owner, notify, unfinished_drop)
drop_unfinished(principal_prefix, unfinished_drop)
redis.call('LREM', pending, 1, job_id)
redis.call('HINCRBY', stats, 'canceled', 1)
redis.call('PUBLISH', events, 'ended ' .. job_id)
return {1, 'canceled'}
