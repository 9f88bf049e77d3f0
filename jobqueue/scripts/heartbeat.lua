--[[
heartbeat: push this worker's heartbeat deadline forward (server clock, so pods' clocks don't matter).

KEYS[1] workers ZSET worker id -> heartbeat deadline, ms
ARGV[1] worker id
ARGV[2] worker ttl, ms
Returns the new deadline.
]]
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
return deadline
