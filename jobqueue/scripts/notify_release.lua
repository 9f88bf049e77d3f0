--[[
notify_release: hand a leased id back undelivered (the notifier is stopping mid-attempt), due now, so
another notifier picks it up at once instead of after the lease. The attempt is not counted.

KEYS[1] notify  ZSET  job id -> next attempt due / lease deadline (ms)
ARGV[1] job id
ARGV[2] lease token (the score notify_claim returned)
Returns 1 released, 0 lease not ours (nothing changed).
]]
local notifyKey = KEYS[1]
local id, token = ARGV[1], ARGV[2]

local score = redis.call('ZSCORE', notifyKey, id)
if not score or tonumber(score) ~= tonumber(token) then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', notifyKey, 'XX', t[1] * 1000 + math.floor(t[2] / 1000), id)
return 1
