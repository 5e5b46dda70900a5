-- One page, many users: each request picks a random path (e.g. different
-- search queries) and, if a tokens file is given, a random bearer token.
--   wrk ... -s bench/wrk/pages.lua http://host:port -- PATHS_FILE [TOKENS_FILE|-]
-- Used for the Before and Actual columns of the success-metrics table: the
-- same files against the bench-only base-table app and against the product.

local common = require "common"
local paths, tokens = {}, {}

setup = common.setup

function init(args)
  paths = common.read_lines(args[1])
  if args[2] and args[2] ~= "-" then tokens = common.read_lines(args[2]) end
  common.seed_random(thread_id)
end

function request()
  local path = common.pick(paths)
  if #tokens > 0 then
    return wrk.format("GET", path, common.bearer(tokens))
  end
  return wrk.format("GET", path)
end

done = common.report
