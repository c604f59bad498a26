-- Keep a gateway session alive inside a cqueues controller (Debian: lua-cqueues): a cqueues
-- thread resumes the keep-alive coroutine and waits with cqueues.poll on what it yields: the
-- request in flight is a pollable (:pollfd(), :events(), :timeout()), so the thread wakes when
-- the answer is there; between tickles it sleeps. The controller keeps serving its other threads.
--   lua5.4 examples/cqueues_host.lua [BASE_URL] [SECONDS]
local dir = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/?.so;" .. package.cpath

local cqueues = require("cqueues")
local condition = require("cqueues.condition")
local ibkr = require("ibkr")

local s = ibkr.new{ base_url = arg[1] }
local cq = cqueues.new()
local stopping = condition.new() -- signalled when the keep-alive is stopped: wakes its thread

cq:wrap(function()
  local co = s:keepalive{
    interval = 60,
    on_state = function(new, old) print(string.format("session %s -> %s", old or "(start)", new)) end,
  }
  while true do
    local ok, wait, req = coroutine.resume(co)
    if not ok then error(wait) end
    if coroutine.status(co) == "dead" then break end
    if req then
      cqueues.poll(req, stopping, req:timeout()) -- the answer is there (or the stop, or its deadline)
      cqueues.cancel(req) -- its descriptor is closed when the keep-alive collects the answer
    else
      cqueues.poll(stopping, wait) -- sleeps until the next tickle, or the stop
    end
  end
  print("keep-alive ended")
end)

local beats = 0
cq:wrap(function() -- other work on the same controller
  while not s:closed() do
    beats = beats + 1
    cqueues.sleep(0.1)
  end
end)

local seconds = tonumber(arg[2])
if seconds then
  cq:wrap(function()
    cqueues.sleep(seconds)
    s:stop()
    s:close()
    stopping:signal()
  end)
end
assert(cq:loop())
print(string.format("heartbeats: %d", beats))
