--[[
_shared: helpers every transition script uses. `jobqueue.protocol.lua_source` puts this text in front
of each script, so one definition serves them all (EVALSHA scripts cannot call each other).
]]

-- Milliseconds on the Redis server's clock: every timestamp of a job comes from one clock.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- Every worker silent for longer than the worker ttl means Redis itself was away (stalled or
-- unreachable): start a grace period of one ttl, so recovery does not declare live workers dead the
-- moment it is back. True when it started one.
local function grace_after_silence(stats, worker_ttl, now)
  local last_beat = tonumber(redis.call('HGET', stats, 'beat_at') or now)
  if now - last_beat <= worker_ttl then return false end
  redis.call('HSET', stats, 'grace_until', now + worker_ttl)
  return true
end

-- A worker beats: its deadline moves on, and so does the model's last beat (see above).
local function beat(workers, stats, wid, worker_ttl, now)
  grace_after_silence(stats, worker_ttl, now)
  redis.call('HSET', stats, 'beat_at', now)
  redis.call('ZADD', workers, now + worker_ttl, wid)
end

-- A job reached a terminal state: its record and idempotency key expire after the job ttl, its webhook
-- enters the outbox when it has a callback, and its owner's unfinished count is to drop by one.
-- Each end of a job (a retried job ends again) is its own delivery, numbered by notify_end: a lease
-- carries the number it was claimed for, so an attempt still running for an earlier end can never
-- record its outcome against this one. The id is due now even when an earlier end's attempt still
-- holds it under a lease (that lease is void from here on) or waits for a backoff.
local function close_job(job, id, ttl, now, idem, callback, owner, notify, unfinished_drop)
  redis.call('EXPIRE', job, ttl)
  if idem then redis.call('EXPIRE', idem, ttl) end
  if callback then
    redis.call('HINCRBY', job, 'notify_end', 1)
    redis.call('HSET', job, 'notify_state', 'pending', 'notify_attempts', 0)
    redis.call('HDEL', job, 'notify_last_status', 'notify_last_error')
    redis.call('ZADD', notify, now, id)
  end
  if owner then unfinished_drop[owner] = (unfinished_drop[owner] or 0) + 1 end
end

-- True when a notify lease of end `lease_end` no longer matches the job's record: the job runs again
-- (retried) or has ended again since the claim. Such a lease's outcome is recorded nowhere.
local function notify_superseded(status, notify_end, lease_end)
  if not status then return false end
  if status == 'pending' or status == 'processing' then return true end
  return tonumber(notify_end or 0) ~= tonumber(lease_end)
end

-- Lower each owner's unfinished count by what `close_job` collected, one write per owner.
local function drop_unfinished(principal_prefix, unfinished_drop)
  for owner, n in pairs(unfinished_drop) do redis.call('HINCRBY', principal_prefix .. owner, 'unfinished', -n) end
end

-- One more unfinished job for a principal (a submit or a retry), within its limits: nil when admitted
-- (a token taken from its bucket), else the refusal {code, detail}: -4 too many unfinished jobs, -3 rate
-- limited (detail: retry after, ms). `q` carries principal, rate, burst, max_unfinished. Writes nothing
-- when it refuses.
local function admit(q, now)
  local bucket_tokens, bucket_at, unfinished = unpack(redis.call('HMGET', q.principal, 'tokens', 'at', 'unfinished'))
  if q.max_unfinished > 0 and tonumber(unfinished or 0) >= q.max_unfinished then return {-4, ''} end
  if q.rate > 0 then
    local tokens = tonumber(bucket_tokens or q.burst)
    local elapsed = now - tonumber(bucket_at or now)
    tokens = math.min(q.burst, tokens + elapsed * q.rate / 1000)
    if tokens < 1 then return {-3, tostring(math.ceil((1 - tokens) * 1000 / q.rate))} end
    redis.call('HSET', q.principal, 'tokens', tostring(tokens - 1), 'at', now)
  end
  return nil
end

-- Create one job and queue it, or say why not (see enqueue.lua for the codes). `q` carries the
-- request's shared settings: model, owner, max_len, rate, burst, max_unfinished, job_prefix, stats,
-- principal. Writes nothing when it refuses.
local function enqueue_one(q, pending, job, idem, job_id, input, priority, callback, fingerprint, use_idem, traceparent)
  -- The same job id again: our own earlier run whose reply was lost.
  local status = redis.call('HGET', job, 'status')
  if status then return {1, job_id, status} end

  if use_idem then
    local existing = redis.call('GET', idem)
    if existing then
      local existing_status, existing_print = unpack(redis.call('HMGET', q.job_prefix .. existing, 'status', 'fingerprint'))
      if existing_status then
        if existing_print ~= fingerprint then return {-5, existing, 'conflict'} end
        return {2, existing, existing_status}
      end
      -- the key outlived its job's record: a new job takes it over
    end
  end

  if q.max_len > 0 and redis.call('LLEN', pending) >= q.max_len then return {-2, '', ''} end

  local now = now_ms()
  local refused = admit(q, now)
  if refused then return {refused[1], '', refused[2]} end

  redis.call('HSET', job, 'status', 'pending', 'input', input, 'model', q.model, 'priority', priority,
    'owner', q.owner, 'created_at', now, 'queued_at', now, 'attempts', 0)
  if callback ~= '' then redis.call('HSET', job, 'callback_url', callback) end
  if traceparent and traceparent ~= '' then redis.call('HSET', job, 'traceparent', traceparent) end  -- every run joins its trace
  -- No TTL while the job lives: a record expires only once it is finished.
  if use_idem then
    redis.call('SET', idem, job_id)
    redis.call('HSET', job, 'idem', idem, 'fingerprint', fingerprint)
  end
  redis.call('HINCRBY', q.principal, 'unfinished', 1)
  redis.call('LPUSH', pending, job_id)
  redis.call('HINCRBY', q.stats, 'enqueued', 1)
  return {1, job_id, 'pending'}
end
