-- Keep a gateway session alive from a libuv loop (luv; Debian: lua-luv), next to other work:
-- the keep-alive is resumed from a timer, or as soon as the answer of its request in flight is
-- there (uv.new_poll on the request's descriptor), and never blocks the loop (one
-- resume < 1 ms).
--   lua5.4 examples/luv_host.lua [BASE_URL] [SECONDS]
local dir = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/?.so;" .. package.cpath

local uv = require("luv")
local ibkr = require("ibkr")

local s = ibkr.new{ base_url = arg[1] }
local co = s:keepalive{
  interval = 60,
  on_state = function(new, old) print(string.format("session %s -> %s", old or "(start)", new)) end,
}

-- Each resume yields the seconds until the next one and, while a request is in flight, that
-- request: a pollable whose :pollfd() becomes readable when its answer arrived.
local timer = uv.new_timer()
local watcher -- uv poll handle on the request in flight
local tick

local function unwatch()
  if watcher then
    watcher:stop()     -- before the descriptor can be closed by the next resume
    watcher:close()
    watcher = nil
  end
  timer:stop()
end

function tick()
  unwatch()
  local ok, wait, req = coroutine.resume(co)
  if not ok or coroutine.status(co) == "dead" then
    if not ok then io.stderr:write(tostring(wait), "\n") end
    timer:close()
    return
  end
  local fd = req and req:pollfd()
  if fd and fd >= 0 then
    watcher = uv.new_poll(fd)
    watcher:start(req:events(), tick)
    wait = req:timeout()
  end
  timer:start(math.ceil(wait * 1000), 0, tick)
end
tick()

-- Other work on the same loop: a heartbeat that would stall if the keep-alive blocked.
local beats = 0
local heartbeat = uv.new_timer()
heartbeat:start(100, 100, function() beats = beats + 1 end)

local seconds = tonumber(arg[2])
if seconds then
  uv.new_timer():start(math.floor(seconds * 1000), 0, function()
    s:stop()                 -- the keep-alive ends at its next resume ...
    unwatch()
    uv.stop()                -- ... but here we simply leave the loop
  end)
end
uv.run()
print(string.format("heartbeats: %d", beats))
s:close()
