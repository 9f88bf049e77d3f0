--[[
cancel: end a pending job as `canceled`. A worker that already moved the id skips it at claim.

KEYS[1] job      HASH
KEYS[2] pending  LIST
ARGV[1] job id
ARGV[2] job ttl, seconds
ARGV[3] events channel
Returns {1, "canceled"} done, {0, status} not pending (nothing changed), {-1, ""} no such job.
]]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1, ''} end
if status ~= 'pending' then return {0, status} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', now)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return {1, 'canceled'}
