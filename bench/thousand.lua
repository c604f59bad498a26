-- 1,000 sessions kept alive by one process: every session has its own keep-alive coroutine
-- (interval 1 s), all driven by one ibkr.run, which waits in poll(2) on the requests' completion
-- descriptors. Reports the process's threads, open descriptors, RSS and CPU per tickle (user +
-- system of every thread, the engine's included) once every session is up, and how long that took.
-- usage: lua5.4 bench/thousand.lua BASE_URL [SESSIONS] [SECONDS]
local ibkr = require("ibkr")
local core = ibkr.core

local base, n, secs = arg[1], tonumber(arg[2] or 1000), tonumber(arg[3] or 10)
if not base then
  io.stderr:write("usage: thousand.lua BASE_URL [SESSIONS] [SECONDS]\n")
  os.exit(64)
end

local function status(field)
  local f = assert(io.open("/proc/self/status"))
  local v
  for line in f:lines() do v = v or tonumber(line:match("^" .. field .. ":%s*(%d+)")) end
  f:close()
  return v
end

local function open_fds()
  local pid = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
  local p = io.popen("ls /proc/" .. pid .. "/fd | wc -l")
  local c = tonumber(p:read("a"))
  p:close()
  return c - 1 -- the pipe of this very popen
end

local sessions, cos, errors = {}, {}, 0
for i = 1, n do
  local s = ibkr.new{ base_url = base, retries = 0 }
  sessions[i] = s
  cos[i] = s:keepalive{ interval = 1, retry_interval = 1, on_error = function() errors = errors + 1 end }
end
-- first round outside the measurement: every session connected (the engine thread does the TLS
-- handshakes) and answered once; how long that took is reported as startup_s
local t_start = core.monotonic()
repeat
  ibkr.run(cos, { duration = 0.5 })
  local up = 0
  for _, s in ipairs(sessions) do if s:state() then up = up + 1 end end
until up == n or core.monotonic() - t_start > 60
local startup = core.monotonic() - t_start
local req0 = 0
for _, s in ipairs(sessions) do req0 = req0 + s:stats().requests end
local c0, w0 = os.clock(), core.monotonic()
ibkr.run(cos, { duration = secs })
local cpu, wall = os.clock() - c0, core.monotonic() - w0
local req = -req0
for _, s in ipairs(sessions) do req = req + s:stats().requests end
io.write(string.format("thousand sessions=%d seconds=%.1f tickles=%d errors=%d threads=%d fds=%d rss_kib=%d "
  .. "cpu_us_per_tickle=%.1f cpu_share=%.3f startup_s=%.2f\n", n, wall, req, errors, status("Threads"),
  open_fds(), status("VmRSS"), cpu * 1e6 / math.max(req, 1), cpu / wall, startup))
for _, s in ipairs(sessions) do s:stop(); s:close() end
