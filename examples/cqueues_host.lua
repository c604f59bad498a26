-- Keep a gateway session alive inside a cqueues controller (Debian: lua-cqueues), next to its
-- other threads: ibkr.cqueues drives the keep-alive from a thread of the controller that waits
-- with cqueues.poll on the request's descriptor while a request is in flight (woken when the
-- answer is there), else for the seconds the keep-alive asked.
--   lua5.4 examples/cqueues_host.lua [BASE_URL] [SECONDS]
local dir = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/?.so;" .. package.cpath

local cqueues = require("cqueues")
local ibkr = require("ibkr")

local s = ibkr.new{ base_url = arg[1] }
local cq = cqueues.new()
local keepalive = s:keepalive{
  interval = 60,
  on_state = function(new, old) print(string.format("session %s -> %s", old or "(start)", new)) end,
}
local driver = require("ibkr.cqueues").drive(cq, keepalive) -- (a list works too)

local beats, done = 0, false
cq:wrap(function() -- other work on the same controller
  while not done do
    beats = beats + 1
    cqueues.sleep(0.1)
  end
end)

local seconds = tonumber(arg[2])
if seconds then
  cq:wrap(function()
    cqueues.sleep(seconds)
    driver:stop()               -- its thread ends now, not at the next tickle
    coroutine.close(keepalive)  -- frees its request, if one was in flight
    print("keep-alive ended")
    done = true
  end)
end
assert(cq:loop())
print(string.format("heartbeats: %d", beats))
s:close()
