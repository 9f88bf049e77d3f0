--[[
notify_delivered: a webhook attempt got a 2xx; the notification is done.

Only while the claim's lease is still ours (score == token), so a retried call whose first reply was
lost, or a notifier whose lease ran out and was re-claimed elsewhere, changes nothing. Nor does an
attempt for an end the job has left behind (retried since the claim: running again, or ended again):
the record describes the latest end, whose own delivery this must not mark done.

KEYS[1] notify  ZSET  job id -> next attempt due / lease deadline (ms)
KEYS[2] job     HASH  the job's record
ARGV[1] job id
ARGV[2] lease token (the score notify_claim returned)
ARGV[3] HTTP status of the attempt
ARGV[4] end number the lease was claimed for
Returns 1 recorded, 0 lease not ours (nothing changed), 3 superseded: the job was retried since the
claim (nothing changed), -1 no such job (id dropped from the outbox).
]]
local notifyKey, jobKey = KEYS[1], KEYS[2]
local id, token, httpStatus, leaseEnd = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local status, notifyEnd = unpack(redis.call('HMGET', jobKey, 'status', 'notify_end'))
if notify_superseded(status, notifyEnd, leaseEnd) then return 3 end
local score = redis.call('ZSCORE', notifyKey, id)
if not score or tonumber(score) ~= tonumber(token) then return 0 end
redis.call('ZREM', notifyKey, id)
if not status then return -1 end
redis.call('HINCRBY', jobKey, 'notify_attempts', 1)
redis.call('HSET', jobKey, 'notify_state', 'delivered', 'notify_last_status', httpStatus)
redis.call('HDEL', jobKey, 'notify_last_error')
return 1
