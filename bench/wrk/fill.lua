-- Visits WRK_PATH .. 1 to WRK_PATH .. WRK_KEYS once each, split across wrk's WRK_THREADS
-- threads, then repeats the last key: fills the proxy's store with that many distinct
-- resources before a scale measurement. wrk runs for its whole -d: bench/load.sh stops it
-- once the upstream has served WRK_KEYS requests.
local path = os.getenv("WRK_PATH") or "/"
local keys = tonumber(os.getenv("WRK_KEYS") or "1")
local step = tonumber(os.getenv("WRK_THREADS") or "1")

local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

local counter

function init(args)
  counter = id + 1
end

function request()
  local key = counter
  counter = counter + step
  if key > keys then key = keys end
  return wrk.format("GET", path .. key)
end
