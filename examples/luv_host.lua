-- Keep a gateway session alive from a libuv loop (luv; Debian: lua-luv), next to other work:
-- ibkr.luv drives the keep-alive on luv's default loop, resuming it when its time comes or as
-- soon as the answer of its request in flight is there (a uv poll handle on the request's
-- descriptor). A resume takes well under a millisecond: the loop's other timers keep time.
--   lua5.4 examples/luv_host.lua [BASE_URL] [SECONDS]
local dir = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/?.so;" .. package.cpath

local uv = require("luv")
local ibkr = require("ibkr")

local s = ibkr.new{ base_url = arg[1] }
local keepalive = s:keepalive{
  interval = 60,
  on_state = function(new, old) print(string.format("session %s -> %s", old or "(start)", new)) end,
}
local driver = require("ibkr.luv").drive(keepalive) -- (a list works too: keep-alives, streams, workers)

-- Other work on the same loop: a heartbeat that would stall if the keep-alive blocked.
local beats = 0
local heartbeat = uv.new_timer()
heartbeat:start(100, 100, function() beats = beats + 1 end)

local seconds = tonumber(arg[2])
if seconds then
  local done = uv.new_timer()
  done:start(math.floor(seconds * 1000), 0, function()
    driver:stop()      -- nothing of the keep-alive is left on the loop ...
    heartbeat:close()
    done:close()       -- ... nor of ours: uv.run() returns
  end)
end
uv.run()
coroutine.close(keepalive) -- frees its request, if one was in flight
print(string.format("heartbeats: %d", beats))
s:close()
