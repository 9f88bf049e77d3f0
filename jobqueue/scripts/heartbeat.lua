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
local now = now_ms()
beat(workers, stats, wid, worker_ttl, now)
return now + worker_ttl
