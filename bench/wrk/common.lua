-- Shared by the wrk scripts of `make bench` (bench/loadgen.py runs wrk with
-- LUA_PATH pointing here, so `require "common"` finds this file).
--   read_lines(name)  the non-empty lines of a file (paths, bearer tokens)
--   report(...)       wrk's done() hook: one "WRKJSON {...}" line with the
--                     totals and latency percentiles (microseconds), parsed
--                     by bench/loadgen.py instead of wrk's human-readable text.

local M = {}

function M.read_lines(name)
  local lines = {}
  local f = assert(io.open(name, "r"), "cannot open " .. name)
  for line in f:lines() do
    if line ~= "" then lines[#lines + 1] = line end
  end
  f:close()
  assert(#lines > 0, name .. " is empty")
  return lines
end

function M.pick(list)
  return list[math.random(#list)]
end

function M.bearer(tokens)
  return { ["Authorization"] = "Bearer " .. M.pick(tokens) }
end

local thread_counter = 0
function M.setup(thread)
  thread_counter = thread_counter + 1
  thread:set("thread_id", thread_counter)
end

function M.seed_random(thread_id)
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

function M.report(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p95": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end

return M
