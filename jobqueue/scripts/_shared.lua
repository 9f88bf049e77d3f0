--[[
_shared: helpers every transition script uses. `jobqueue.protocol.lua_source` puts this text in front
of each script, so one definition serves them all (EVALSHA scripts cannot call each other).
]]

-- Milliseconds on the Redis server's clock: every timestamp of a job comes from one clock.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- A job reached a terminal state: its record and idempotency key expire after the job ttl, its webhook
-- enters the outbox when it has a callback, and its owner's unfinished count is to drop by one.
local function close_job(job, id, ttl, now, idem, callback, owner, notify, unfinished_drop)
  redis.call('EXPIRE', job, ttl)
  if idem then redis.call('EXPIRE', idem, ttl) end
  if callback then
    redis.call('HSET', job, 'notify_state', 'pending', 'notify_attempts', 0)
    redis.call('HDEL', job, 'notify_last_status', 'notify_last_error')
    redis.call('ZADD', notify, 'NX', now, id)
  end
  if owner then unfinished_drop[owner] = (unfinished_drop[owner] or 0) + 1 end
end

-- Lower each owner's unfinished count by what `close_job` collected, one write per owner.
local function drop_unfinished(principal_prefix, unfinished_drop)
  for owner, n in pairs(unfinished_drop) do redis.call('HINCRBY', principal_prefix .. owner, 'unfinished', -n) end
end

