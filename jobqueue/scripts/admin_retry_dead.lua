--[[
admin_retry_dead: move up to N of one model's dead letters back to their pending lists (admin "retry all").

Walks the dead-letter list from its tail (the oldest) so jobs run again in the order they failed. A job
still `failed` or `expired` gets what a single retry gives it: status pending, attempts 0, a fresh
queued_at, its error/result/timings/worker cleared, and its id LPUSHed onto the pending list of its
priority (the head, like a new submit). Ids whose record is gone (expired after JOB_TTL_SECONDS) or
that were already retried one by one are dropped from the list. When the model's pending lists hold
max pending ids, the id goes back to the tail of the dead list and the script stops.

KEYS[1] dead            LIST  the model's dead-lettered ids (LPUSHed: the head is the newest)
KEYS[2] pending:high    LIST
KEYS[3] pending:normal  LIST
KEYS[4] pending:low     LIST
KEYS[5] stats           HASH  counters; `retried` += jobs moved
ARGV[1] job key prefix (a record is <ARGV[1]><id>; same hash tag as KEYS)
ARGV[2] most dead letters to look at in this call
ARGV[3] job ttl, seconds (the retried record lives this long again)
ARGV[4] max pending ids of the model, all priorities (0 = unbounded)
ARGV[5] events channel ("pending <id> <id> ..." is published for the moved ids)
Returns {moved, dropped, dead letters left, 1 if stopped because the pending lists are full else 0}.
]]
local dead = KEYS[1]
local pending_by_priority = {high = KEYS[2], normal = KEYS[3], low = KEYS[4]}
local stats = KEYS[5]
local job_prefix, limit, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max_pending, events = tonumber(ARGV[4]), ARGV[5]

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local pending_count = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) + redis.call('LLEN', KEYS[4])
local moved, dropped, full = {}, 0, 0

for _ = 1, limit do
  local id = redis.call('RPOP', dead)
  if not id then break end
  local job = job_prefix .. id
  local f = redis.call('HMGET', job, 'status', 'priority')
  if f[1] == 'failed' or f[1] == 'expired' then
    if max_pending > 0 and pending_count >= max_pending then
      redis.call('RPUSH', dead, id)
      full = 1
      break
    end
    local pending = pending_by_priority[f[2]] or pending_by_priority['normal']
    redis.call('HSET', job, 'status', 'pending', 'attempts', 0, 'queued_at', now)
    redis.call('HDEL', job, 'error', 'result', 'started_at', 'finished_at', 'worker')
    redis.call('EXPIRE', job, ttl)
    redis.call('LPUSH', pending, id)
    pending_count = pending_count + 1
    moved[#moved + 1] = id
  else
    dropped = dropped + 1
  end
end

if #moved > 0 then
  redis.call('HINCRBY', stats, 'retried', #moved)
  redis.call('PUBLISH', events, 'pending ' .. table.concat(moved, ' '))
end
return {#moved, dropped, redis.call('LLEN', dead), full}
