-- Shared by every script, after the generated constants (pollen/store/scripts.py):
--   RANK        status -> rank, from pollen.models.JobStatus (statuses only move forward)
--   TERMINAL    the rank of the terminal statuses
--   MAX_EVENTS  approximate length cap of a job's event stream
--   MAX_RESPONSES  how many provider responses a job keeps
--   FINAL_DELIVERY  set of delivery states that never change again
-- event(stream, field, value, ...): append one lifecycle event to a job's stream.
local function event(stream, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', MAX_EVENTS, '*', ...)
end
