-- Keep a gateway session alive from a plain Lua script.
--   lua5.4 examples/plain.lua [BASE_URL] [SECONDS]
-- BASE_URL defaults to $IBKR_BASE_URL, then https://localhost:5000/v1/api; SECONDS to forever.
local dir = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."  -- run from a checkout as well
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/?.so;" .. package.cpath

local ibkr = require("ibkr")

local s <close> = ibkr.new{ base_url = arg[1] }
local co = s:keepalive{
  interval = 60,
  on_state = function(new, old, detail)
    print(string.format("session %s -> %s", old or "(start)", new))
    if ibkr.is_error(detail) then print("  " .. tostring(detail)) end
  end,
  on_error = function(err) io.stderr:write("keep-alive: ", tostring(err), "\n") end,
}
-- ibkr.run sleeps until the coroutine's next wake-up; several sessions: ibkr.run{co1, co2}.
ibkr.run(co, { duration = tonumber(arg[2]) })
