-- The guide's k6 scenario as wrk connections: each connection is one virtual
-- user that loads the feed (anonymous GET /api/projects, as the guide's
-- loadtest.js does) and then waits about one second before the next load.
--   wrk -tT -cC ... -s bench/wrk/users.lua http://host:port -- THINK_MS C/T
-- The wait is uniform in [THINK_MS/2, 3*THINK_MS/2], so users do not fire in
-- lock-step. wrk's delay() runs before every request of a connection, the first
-- too; the first C/T calls per thread (one per connection as it opens) return 0:
-- a user sends its first request as soon as it is connected, as a browser does
-- (an idle new connection would hold a gunicorn gthread thread until its first
-- bytes arrive, which real clients do not cause). bench/loadgen.py users_step.

local common = require "common"
local think_ms = 1000
local immediate = 0

setup = common.setup

function init(args)
  think_ms = tonumber(args[1] or "1000")
  immediate = tonumber(args[2] or "0")
  common.seed_random(thread_id)
end

function delay()
  if immediate > 0 then
    immediate = immediate - 1
    return 0
  end
  return math.random(math.floor(think_ms / 2), math.floor(think_ms * 3 / 2))
end

function request()
  return wrk.format("GET", "/api/projects")
end

done = common.report
