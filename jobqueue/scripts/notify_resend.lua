--[[
notify_resend: deliver a finished job's webhook again (admin), whether it was delivered or given up.

Resets the attempt count and the last status/error, marks it pending and makes it due now. A job whose
notification is already pending is left as it is (its delivery may be in flight under a lease: moving
its score would break that lease), so calling this twice is harmless.

KEYS[1] notify         ZSET  job id -> next attempt due / lease deadline (ms)
KEYS[2] job            HASH  the job's record
KEYS[3] notify-failed  LIST  ids whose delivery was given up
ARGV[1] job id
Returns {code, detail}: {1, "pending"} queued, {2, "pending"} already pending (unchanged),
{0, status} job not finished, {-2, status} job without callback_url, {-1, ""} no such job.
]]
local notifyKey, jobKey, failedKey = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]

local f = redis.call('HMGET', jobKey, 'status', 'callback_url', 'notify_state')
local status, callback, state = f[1], f[2], f[3]
if not status then return {-1, ''} end
if not callback or callback == '' then return {-2, status} end
if status == 'pending' or status == 'processing' then return {0, status} end
if state == 'pending' and redis.call('ZSCORE', notifyKey, id) then return {2, 'pending'} end
local t = redis.call('TIME')
redis.call('HSET', jobKey, 'notify_state', 'pending', 'notify_attempts', 0)
redis.call('HDEL', jobKey, 'notify_last_status', 'notify_last_error')
redis.call('ZADD', notifyKey, t[1] * 1000 + math.floor(t[2] / 1000), id)
redis.call('LREM', failedKey, 0, id)
return {1, 'pending'}
