-- The mixed profile: signed-in users (one random bearer token per request)
-- reading the feed, the project leaderboard, their dashboard and search, with
-- 5% upvote toggles POSTed through the API (Content-Length: 0).
--   wrk ... -s bench/wrk/mixed.lua http://host:port -- TOKENS SEARCH_PATHS UPVOTE_PATHS
-- Closed loop (no think time): every connection sends its next request as soon
-- as the last one is answered, so req/s is what the server sustains.
--   feed 40%, leaderboard 20%, dashboard 20%, search 15%, upvote toggle 5%

local common = require "common"
local tokens, searches, upvotes = {}, {}, {}

setup = common.setup

function init(args)
  tokens = common.read_lines(args[1])
  searches = common.read_lines(args[2])
  upvotes = common.read_lines(args[3])
  common.seed_random(thread_id)
end

function request()
  local headers = common.bearer(tokens)
  local r = math.random(100)
  if r <= 40 then
    return wrk.format("GET", "/api/projects", headers)
  elseif r <= 60 then
    return wrk.format("GET", "/api/leaderboard/projects", headers)
  elseif r <= 80 then
    return wrk.format("GET", "/api/dashboard", headers)
  elseif r <= 95 then
    return wrk.format("GET", common.pick(searches), headers)
  end
  return wrk.format("POST", common.pick(upvotes), headers, "")
end

done = common.report
