--[[
heartbeat: push this worker's heartbeat deadline forward (server clock, so pods' clocks don't matter).
When every worker of the model was silent for longer than the TTL (Redis was unreachable or
stalled), a grace period of one TTL starts: recovery declares nobody dead until live workers beat again.

KEYS[1] workers ZSET worker id -> heartbeat deadline, ms
KEYS[2] stats   HASH beat_at (last beat of any worker), grace_until
ARGV[1] worker id
ARGV[2] worker ttl, ms
Returns the new deadline.
]]
local workers, stats = KEYS[1], KEYS[2]
local wid, worker_ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local last_beat = tonumber(redis.call('HGET', stats, 'beat_at') or now)
if now - last_beat > worker_ttl then redis.call('HSET', stats, 'grace_until', now + worker_ttl) end
redis.call('HSET', stats, 'beat_at', now)
redis.call('ZADD', workers, now + worker_ttl, wid)
return now + worker_ttl
