-- Timing figures that specs cannot hold a loaded machine to (the specs check the events: no
-- retry after the deadline, the signal obeyed and not the interval, the pacer's arithmetic):
--   pacing      25 calls at the default pacing over HTTPS against the mock, which counts arrivals
--               in any one-second window as the gateway does: how many it answered 429
--   cli_timeout ibkr-session against a mock that never answers: how far past --timeout it ended
--   mock_start  the mock gateway's start-up with TLS (a new certificate): the worst of five
--   cli_signal  ibkr-session keepalive (asleep for its 60 s interval, or with its tickle hung):
--               seconds from SIGTERM/SIGINT to its end
-- One line each, "mock_start ...", "pacing ...", "cli_timeout ...", "cli_signal ...", for
-- bench/report.lua.
-- usage (from the checkout, the module built): lua5.4 bench/timing.lua
local ibkr = require("ibkr")
local core = ibkr.core
local testing = require("ibkr.mock.testing")

testing.command = "lua5.4 bin/ibkr-mock-gateway"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- the mock gateway's start-up over TLS (a fresh certificate each time), as specs start it
do
  local worst = 0
  for _ = 1, 5 do
    local gw = assert(testing.start{ tls = true })
    worst = math.max(worst, gw.startup_time)
    gw:stop()
  end
  io.write(string.format("mock_start proto=https runs=5 worst_ms=%.0f\n", worst * 1000))
end

-- the pacer against the gateway's own count
do
  local m = assert(testing.start{ tls = true })
  local s = ibkr.new{ base_url = m.url }
  for i = 1, 25 do assert(s:request("GET", "/portfolio/accounts"), "call " .. i) end
  local st = s:stats()
  io.write(string.format("pacing proto=https calls=25 rate_limited=%d retries=%d arrivals=%d\n",
    st.rate_limited, st.retries, #m:api_log("/portfolio/accounts")))
  s:close()
  m:stop()
end

local m = assert(testing.start{ tls = true, pacing = false, init_delay = 0, reauth_delay = 0 })

-- --timeout against a gateway that holds every answer back
do
  m:fault{ kind = "hold", seconds = 60, count = 1000 }
  local worst, n = 0, 0
  for _, args in ipairs{ "--timeout 1 --retries 3 tickle", "--timeout 1.5 --retries 5 status",
      "--timeout 1 init", "--timeout 1.5 wait --init" } do
    for _ = 1, 3 do
      local t = tonumber(args:match("%-%-timeout ([%d.]+)"))
      local t0 = core.monotonic()
      os.execute("bin/ibkr-session --url " .. q(m.url) .. " " .. args .. " >/dev/null 2>&1 </dev/null")
      worst = math.max(worst, core.monotonic() - t0 - t)
      n = n + 1
    end
  end
  io.write(string.format("cli_timeout runs=%d worst_over_ms=%.0f\n", n, worst * 1000))
  m:release()
  m:clear_faults()
end

-- a signal to keepalive: asleep for its interval, and with its tickle hung
do
  local worst, n = 0, 0
  for _, hung in ipairs{ false, true } do
    for _, sig in ipairs{ "TERM", "INT" } do
      m:clear_log()
      if hung then m:fault{ path = "/tickle", kind = "hold", seconds = 60, count = 1000 } end
      local p = assert(io.popen("echo $$; exec bin/ibkr-session --url " .. q(m.url)
        .. " keepalive --interval 60 2>/dev/null </dev/null"))
      local pid = p:read("l")
      if hung then
        assert(m:await_held(1))
      else
        assert(p:read("l"), "no first line from keepalive")
      end
      local t0 = core.monotonic()
      os.execute("kill -" .. sig .. " " .. pid)
      p:read("a")
      p:close()
      worst = math.max(worst, core.monotonic() - t0)
      n = n + 1
      m:release()
      m:clear_faults()
    end
  end
  io.write(string.format("cli_signal runs=%d worst_ms=%.0f\n", n, worst * 1000))
end

m:stop()
