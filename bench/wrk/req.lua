-- One request shape per run, configured from the environment (wrk's Lua has `os`):
--   WRK_METHOD  GET | PUT            (default GET)
--   WRK_PATH    path, or prefix when WRK_KEYS > 0
--   WRK_KEYS    0: always WRK_PATH; N: WRK_PATH .. random key in [1, N]
--   WRK_IF_MATCH  If-Match value to send, e.g. "v1" with its quotes
local method = os.getenv("WRK_METHOD") or "GET"
local path = os.getenv("WRK_PATH") or "/"
local keys = tonumber(os.getenv("WRK_KEYS") or "0")
local if_match = os.getenv("WRK_IF_MATCH")

local headers = {}
local body = nil
if if_match and if_match ~= "" then headers["If-Match"] = if_match end
if method ~= "GET" then
  headers["Content-Type"] = "application/json"
  body = '{"name":"bench","value":1}'
end

-- Built on first use: wrk sets the Host header only after the script is loaded.
local fixed = nil

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  if keys == 0 then
    fixed = fixed or wrk.format(method, path, headers, body)
    return fixed
  end
  return wrk.format(method, path .. math.random(1, keys), headers, body)
end
