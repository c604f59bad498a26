-- Keep a gateway session alive inside a cqueues controller (Debian: lua-cqueues): the
-- keep-alive loop runs inline in a cqueues thread and waits with cqueues.sleep, so the
-- controller keeps serving its other threads.
--   lua5.4 examples/cqueues_host.lua [BASE_URL] [SECONDS]
local dir = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/?.so;" .. package.cpath

local cqueues = require("cqueues")
local ibkr = require("ibkr")

local s = ibkr.new{ base_url = arg[1] }
local cq = cqueues.new()

cq:wrap(function()
  s:keepalive_loop{
    interval = 60,
    sleep = cqueues.sleep,
    on_state = function(new, old) print(string.format("session %s -> %s", old or "(start)", new)) end,
  }
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
  end)
end
assert(cq:loop())
print(string.format("heartbeats: %d", beats))
