--[[
notify_claim: lease up to N due webhook deliveries to one notifier.

The notify ZSET is the durable outbox: a member's score is when its next attempt is due. Claiming a
due id moves its score to now + lease, so the id is invisible to other notifiers for the lease and
comes back by itself if this notifier dies (at-least-once, no separate in-flight set). The new score
is the claim's fencing token: every later transition passes it back and does nothing unless the score
is still exactly that (the lease is still ours). It is always greater than the old score (the id was
due, lease > 0), so a re-claim after expiry never reuses a token. The claim also names which end of
the job it delivers (notify_end: 1, then 2 when a retried job ends again, ...): transitions check it too.
Ids whose job record is gone (TTL ran out) are dropped from the outbox instead of claimed, and so are
ids whose job is running again (retried after it ended): the core's finish/claim/recover/cancel
scripts put it back when it ends again, and a webhook must only ever carry a finished job.

KEYS[1] notify      ZSET  job id -> next attempt due (ms); while leased: lease deadline (ms)
ARGV[1] job key prefix (record of id X is <prefix>X; same hash tag as KEYS[1])
ARGV[2] max ids to claim
ARGV[3] lease, ms
Returns a flat array: id, lease token (ms), end number, id, lease token, end number, ...
]]
local notifyKey = KEYS[1]
local jobPrefix = ARGV[1]
local maxIds = tonumber(ARGV[2])
local leaseMs = tonumber(ARGV[3])

local now = now_ms()
local out = {}
if maxIds <= 0 then return out end
local due = redis.call('ZRANGEBYSCORE', notifyKey, '-inf', now, 'LIMIT', 0, maxIds)
local deadline = now + leaseMs
for _, id in ipairs(due) do
  local status, notifyEnd = unpack(redis.call('HMGET', jobPrefix .. id, 'status', 'notify_end'))
  if status and status ~= 'pending' and status ~= 'processing' then
    redis.call('ZADD', notifyKey, 'XX', deadline, id)
    out[#out + 1] = id
    out[#out + 1] = deadline
    out[#out + 1] = tonumber(notifyEnd or 0)  -- 0: a record that ended before ends were numbered
  else
    redis.call('ZREM', notifyKey, id)
  end
end
return out
