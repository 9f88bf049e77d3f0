--[[
enqueue: create a job record and put its id on its model's pending list for its priority, atomically.

Safe to run twice with the same job id (a reply lost to a dropped connection is retried): the second
run finds the record and answers as a replay. Refusals write nothing.

KEYS[1] pending    LIST   ids waiting to start (KEDA reads its length)
KEYS[2] job        HASH   the new job's record
KEYS[3] idem       STRING idempotency key -> job id, scoped per principal (used when ARGV[9] == "1")
KEYS[4] stats      HASH   the model's counters
KEYS[5] principal  HASH   the owner's token bucket (tokens, at) and unfinished-job count
ARGV[1]  job id
ARGV[2]  input payload (JSON)
ARGV[3]  model name
ARGV[4]  priority
ARGV[5]  owner (principal name)
ARGV[6]  callback url ("" = none)
ARGV[7]  fingerprint of the request (a replay with another body is a conflict)
ARGV[8]  max pending length of this list (0 = unbounded)
ARGV[9]  "1" when an idempotency key was given
ARGV[10] submits per second per principal (0 = unlimited)
ARGV[11] token bucket size
ARGV[12] max unfinished jobs per principal (0 = unlimited)
ARGV[13] job key prefix (an idempotent replay reads the job the key points to)
ARGV[14] W3C traceparent of the submit's PRODUCER span ("" = tracing off)
Returns {code, job id or "", detail}: 1 created; 2 replay (detail: its current status);
-2 queue full; -3 rate limited (detail: retry after, ms); -4 too many unfinished jobs;
-5 idempotency conflict (detail: the existing job id).
]]
local pending, job, idem = KEYS[1], KEYS[2], KEYS[3]
local q = {
  stats = KEYS[4], principal = KEYS[5], model = ARGV[3], owner = ARGV[5], max_len = tonumber(ARGV[8]),
  rate = tonumber(ARGV[10]), burst = tonumber(ARGV[11]), max_unfinished = tonumber(ARGV[12]), job_prefix = ARGV[13],
}
local job_id, input, priority, callback, fingerprint, use_idem = ARGV[1], ARGV[2], ARGV[4], ARGV[6], ARGV[7], ARGV[9] == '1'
return enqueue_one(q, pending, job, idem, job_id, input, priority, callback, fingerprint, use_idem, ARGV[14])
