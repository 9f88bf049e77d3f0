--[[
enqueue_many: create and queue the jobs of one bulk request (one model, one owner) in one call.

Each job is checked and created on its own exactly as `enqueue` does it (same codes, nothing written
for a refused one); one call instead of one per job saves the API most of its per-job work.

KEYS[1] stats      HASH   the model's counters
KEYS[2] principal  HASH   the owner's token bucket and unfinished-job count
KEYS[3 + 3k .. 5 + 3k] for job k (from 0): its pending LIST (model and priority), its record HASH,
                   its idempotency STRING (used when its flag says so)
ARGV[1] model name
ARGV[2] owner
ARGV[3] max pending length of a list (0 = unbounded)
ARGV[4] submits per second per principal (0 = unlimited)
ARGV[5] token bucket size
ARGV[6] max unfinished jobs per principal (0 = unlimited)
ARGV[7] job key prefix
ARGV[8 + 7k .. 14 + 7k] for job k: id, input payload, priority, callback url, fingerprint, "1" with an
                   idempotency key, traceparent ("" = none)
Returns a flat array: code, job id or "", detail, per job in order (codes as in enqueue.lua).
]]
local q = {
  stats = KEYS[1], principal = KEYS[2], model = ARGV[1], owner = ARGV[2], max_len = tonumber(ARGV[3]),
  rate = tonumber(ARGV[4]), burst = tonumber(ARGV[5]), max_unfinished = tonumber(ARGV[6]), job_prefix = ARGV[7],
}
local out = {}
for k = 0, (#ARGV - 7) / 7 - 1 do
  local a, key = 8 + 7 * k, 3 + 3 * k
  local reply = enqueue_one(q, KEYS[key], KEYS[key + 1], KEYS[key + 2],
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5] == '1', ARGV[a + 6])
  out[#out + 1] = reply[1]
  out[#out + 1] = reply[2]
  out[#out + 1] = reply[3]
end
return out
