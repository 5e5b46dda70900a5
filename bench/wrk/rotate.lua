-- wrk script: each request picks a random path and (optionally) a random bearer token.
--   wrk ... -s bench/wrk/rotate.lua http://host:port -- PATHS_FILE [TOKENS_FILE]
-- PATHS_FILE: one request path per line (already URL-encoded), e.g. varied search
-- queries or project ids. TOKENS_FILE: one JWT per line; each request sends
-- "Authorization: Bearer <random token>" (signed-in reads, many users). Files are
-- read once per wrk thread in init().

local paths = {}
local tokens = {}

local function read_lines(name, into)
  local f = assert(io.open(name, "r"), "cannot open " .. name)
  for line in f:lines() do
    if line ~= "" then into[#into + 1] = line end
  end
  f:close()
end

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end

function init(args)
  read_lines(args[1], paths)
  if args[2] and args[2] ~= "-" then read_lines(args[2], tokens) end
  math.randomseed(os.time() * 1000 + (thread_id or 0))
end

function request()
  local path = paths[math.random(#paths)]
  if #tokens > 0 then
    local headers = { ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)] }
    return wrk.format("GET", path, headers)
  end
  return wrk.format("GET", path)
end
