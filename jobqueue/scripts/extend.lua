--[[
extend: a worker that is making progress (a model call returned and the next one starts) pushes the
backstop deadline of the jobs it runs forward. One batch can take several model calls (one per input
shape, a fixed-batch model run in chunks, a failed batch rerun job by job), each within
JOB_TIMEOUT_SECONDS; the backstop must only catch a worker that stopped making progress.
Only jobs still in flight, processing and run by this worker are touched.

KEYS[1] inflight ZSET  job id -> backstop deadline, ms
ARGV[1] worker id
ARGV[2] job key prefix
ARGV[3] backstop, ms from now
ARGV[4..] job ids
Returns how many deadlines moved.
]]
local inflight = KEYS[1]
local wid, job_prefix, backstop = ARGV[1], ARGV[2], tonumber(ARGV[3])

local now = now_ms()
local moved = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local status, worker = unpack(redis.call('HMGET', job_prefix .. id, 'status', 'worker'))
  if status == 'processing' and worker == wid then
    moved = moved + redis.call('ZADD', inflight, 'XX', 'CH', now + backstop, id)
  end
end
return moved
