--[[
notify_failed_attempt: a webhook attempt failed; retry later, or give up.

Gives up (notify_state failed, out of the outbox, onto the bounded notify-failed list) when the
failure is permanent (410 Gone, another 4xx, a refused address) or this was attempt max; otherwise
the id's score becomes now + delay, when it is due again. Only while the claim's lease is still ours
(score == token): a retried call whose first reply was lost changes nothing the second time. Nor
does an attempt for an end the job has left behind (retried since the claim: running again, or ended
again): the record and the outbox entry belong to the latest end now.

KEYS[1] notify         ZSET  job id -> next attempt due / lease deadline (ms)
KEYS[2] job            HASH  the job's record
KEYS[3] notify-failed  LIST  ids whose delivery was given up, newest first
ARGV[1] job id
ARGV[2] lease token (the score notify_claim returned)
ARGV[3] HTTP status of the attempt ("" when no response: timeout, connection error, refused)
ARGV[4] error text
ARGV[5] "1" permanent (give up now), "0" retryable
ARGV[6] delay before the next attempt, ms
ARGV[7] max attempts
ARGV[8] most ids kept on notify-failed
ARGV[9] end number the lease was claimed for
Returns {code, attempts}: code 1 rescheduled, 2 given up, 0 lease not ours (nothing changed),
3 superseded: the job was retried since the claim (nothing changed), -1 no such job (id dropped from
the outbox).
]]
local notifyKey, jobKey, failedKey = KEYS[1], KEYS[2], KEYS[3]
local id, token, httpStatus, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local permanent = ARGV[5] == '1'
local delayMs = tonumber(ARGV[6])
local maxAttempts = tonumber(ARGV[7])
local failedMax = tonumber(ARGV[8])
local leaseEnd = ARGV[9]

local status, notifyEnd = unpack(redis.call('HMGET', jobKey, 'status', 'notify_end'))
if notify_superseded(status, notifyEnd, leaseEnd) then return {3, 0} end
local score = redis.call('ZSCORE', notifyKey, id)
if not score or tonumber(score) ~= tonumber(token) then return {0, 0} end
if not status then
  redis.call('ZREM', notifyKey, id)
  return {-1, 0}
end
local attempts = redis.call('HINCRBY', jobKey, 'notify_attempts', 1)
redis.call('HSET', jobKey, 'notify_last_error', err)
if httpStatus ~= '' then
  redis.call('HSET', jobKey, 'notify_last_status', httpStatus)
else
  redis.call('HDEL', jobKey, 'notify_last_status')  -- no response this time: an old status would mislead
end
if permanent or attempts >= maxAttempts then
  redis.call('HSET', jobKey, 'notify_state', 'failed')
  redis.call('ZREM', notifyKey, id)
  redis.call('LREM', failedKey, 0, id)  -- once on the list, even after several resends
  redis.call('LPUSH', failedKey, id)
  redis.call('LTRIM', failedKey, 0, failedMax - 1)
  return {2, attempts}
end
local now = now_ms()
redis.call('ZADD', notifyKey, 'XX', now + delayMs, id)
return {1, attempts}
