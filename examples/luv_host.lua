-- Keep a gateway session alive from a libuv loop (luv; Debian: lua-luv), next to other work:
-- the keep-alive is resumed from a timer and never blocks the loop (one resume < 1 ms).
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

local timer = uv.new_timer()
local function tick()
  local ok, wait = coroutine.resume(co)
  if ok and coroutine.status(co) ~= "dead" then
    timer:start(math.ceil(wait * 1000), 0, tick)
  else
    if not ok then io.stderr:write(tostring(wait), "\n") end
    timer:close()
  end
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
    uv.stop()                -- ... but here we simply leave the loop
  end)
end
uv.run()
print(string.format("heartbeats: %d", beats))
s:close()
