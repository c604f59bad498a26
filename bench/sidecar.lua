-- ibkr-session keepalive as a sidecar under attack: the worst delay of a tickle while hostile
-- clients work on its --listen endpoint, or while hostile --on-change commands run.
--
-- For each scenario: a fresh `ibkr-session keepalive --interval 2 --listen 0` against the project's
-- mock gateway (HTTPS, pacing on), a hostile client process (spec/helpers/hostile.lua) or a hostile
-- --on-change command with the mock's state flipped at every tickle, and a scrape of /metrics every
-- 0.25 s on a new connection. A tickle's delay is the gap between two tickles as the mock logged
-- their arrival, minus the 2 s interval: what the loop added (the exchange itself included, ~1 ms
-- when nothing else happens). Figures only, never a gate.
-- usage (from the checkout): lua5.4 bench/sidecar.lua [SECONDS per scenario, default 10] [SCENARIO...]
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local socket = require("socket")
local testing = require("spec.helpers.mock")
local q = require("spec.helpers.raw").q

local SECS = tonumber(arg[1]) or 10
-- 2 s: above the library's own pacing of /tickle (1 per 1.05 s), which would add its 50 ms margin
local INTERVAL = "2"
local only = {}
for i = 2, #arg do only[arg[i]] = true end

local TMP = assert(io.popen("mktemp -d /tmp/ibkr-sidecar.XXXXXX")):read("l")
local PIDS = TMP .. "/daemons"

local SCENARIOS = {
  { name = "baseline" },
  { name = "idle", hostile = "idle", what = "50 clients that connect and send nothing" },
  { name = "beyond", hostile = "beyond", what = "300 connections held (limit 32), replaced when dropped" },
  { name = "slowloris", hostile = "slowloris", what = "20 heads sent a byte per 100 ms" },
  { name = "bigheader", hostile = "bigheader", what = "4 x 1 MB headers at 100 KB/s" },
  { name = "halfopen", hostile = "halfopen", what = "requests + FIN never read; half heads + RST" },
  { name = "malformed", hostile = "malformed", what = "oversized and malformed requests, 4 per 5 ms" },
  { name = "pipeline", hostile = "pipeline", what = "8 x 2000 pipelined scrapes, never read" },
  { name = "noread", hostile = "noread", what = "16 clients sending scrapes, never reading" },
  { name = "scrapes", hostile = "scrapes", what = "16 kept-alive clients scraping back to back" },
  { name = "oc-exit", on_change = "exit 3", flips = true, what = "--on-change exits at once (3)" },
  { name = "oc-daemon", flips = true, what = "--on-change forks daemons that hold its pipes",
    on_change = "sleep 30 & echo $! >> " .. PIDS .. "; setsid sleep 30 </dev/null >/dev/null 2>&1 & "
      .. "echo $! >> " .. PIDS .. "; echo forked" },
  { name = "oc-ignoreterm", flips = true, timeout = 2, what = "--on-change ignores SIGTERM (timeout 2 s)",
    on_change = "trap '' TERM; echo $$ >> " .. PIDS .. "; sleep 60" },
  { name = "oc-megabytes", flips = true, what = "--on-change prints 40 MB",
    on_change = "head -c 20000000 /dev/zero | tr '\\0' x; yes | head -c 20000000" },
  { name = "oc-fast", flips = true, what = "--on-change runs 5 s; a change at every tickle",
    on_change = "sleep 5" },
}

local function sh(cmd) return assert(io.popen(cmd)):read("a") end

local function file_lines(path)
  local f = io.open(path)
  if not f then return {} end
  local t = {}
  for l in f:lines() do t[#t + 1] = l end
  f:close()
  return t
end

-- one GET /metrics on a new connection: seconds, or nil
local function scrape(port)
  local t0 = socket.gettime()
  local c = socket.tcp()
  c:settimeout(3)
  if not c:connect("127.0.0.1", port) then c:close() return nil end
  c:send("GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
  local body = c:receive("*a")
  c:close()
  if not body or not body:match("^HTTP/1%.1 200") then return nil end
  return socket.gettime() - t0
end

local function run(sc, gw)
  gw:reset()
  gw:config{ idle_timeout = 0 }
  os.remove(PIDS)
  local out = TMP .. "/out." .. sc.name
  local args = { "--url", gw.url, "--json", "keepalive", "--interval", INTERVAL, "--listen", "0" }
  if sc.on_change then
    args[#args + 1] = "--on-change"
    args[#args + 1] = sc.on_change
    if sc.timeout then
      args[#args + 1] = "--on-change-timeout"
      args[#args + 1] = tostring(sc.timeout)
    end
  end
  local cmd = "exec lua5.4 bin/ibkr-session"
  for _, a in ipairs(args) do cmd = cmd .. " " .. q(a) end
  local cli = assert(io.popen("echo $$; " .. cmd .. " > " .. out .. " 2>&1"))
  local cli_pid = cli:read("l")
  local port
  for _ = 1, 200 do
    for _, l in ipairs(file_lines(out)) do port = port or tonumber(l:match('"port":(%d+)')) end
    if port then break end
    socket.sleep(0.05)
  end
  assert(port, "ibkr-session did not listen: " .. table.concat(file_lines(out), "\n"))
  socket.sleep(1) -- the first tickle and state
  local hostile
  if sc.hostile then
    local p = assert(io.popen("echo $$; " .. require("spec.helpers.hostile").command(sc.hostile, "127.0.0.1",
      port)))
    hostile = { p = p, pid = p:read("l") }
    assert(p:read("l") == "ready")
  end
  gw:clear_log()
  local t0 = socket.gettime()
  local lat, fails, n, flip, next_flip = {}, 0, 0, false, t0 + 0.5
  while socket.gettime() - t0 < SECS do
    local s = scrape(port)
    n = n + 1
    if s then lat[#lat + 1] = s else fails = fails + 1 end
    if sc.flips and socket.gettime() >= next_flip then
      flip = not flip
      gw:set_state(flip and "competing" or "ready")
      next_flip = next_flip + tonumber(INTERVAL)
    end
    socket.sleep(0.25)
  end
  local t1 = socket.gettime()
  local log = gw:api_log("/tickle")
  local status = io.open("/proc/" .. cli_pid .. "/status")
  local rss = status and status:read("a"):match("VmRSS:%s*(%d+)")
  if status then status:close() end
  if hostile then
    os.execute("kill " .. hostile.pid)
    hostile.p:close()
  end
  os.execute("kill " .. cli_pid)
  cli:close()
  for _, pid in ipairs(file_lines(PIDS)) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
  local times = {}
  for _, e in ipairs(log) do
    if e.time >= t0 and e.time <= t1 then times[#times + 1] = e.time end
  end
  local worst, sum, gaps = 0, 0, 0
  for i = 2, #times do
    local d = times[i] - times[i - 1] - tonumber(INTERVAL)
    worst = math.max(worst, d)
    sum, gaps = sum + d, gaps + 1
  end
  table.sort(lat)
  local runs = sh("grep -c '\"event\":\"on_change\"' " .. out):match("%d+") or "0"
  io.write(string.format("%-14s tickles=%-3d worst_delay_ms=%-7.1f mean_delay_ms=%-6.1f "
    .. "scrapes=%d failed=%d scrape_p50_ms=%.1f scrape_max_ms=%.1f on_change_runs=%s rss_kb=%s  %s\n",
    sc.name, #times, worst * 1000, gaps > 0 and sum / gaps * 1000 or 0, n, fails,
    (lat[math.max(1, math.floor(#lat / 2))] or 0) * 1000, (lat[#lat] or 0) * 1000, runs, rss or "?",
    sc.what or ""))
  io.stdout:flush()
end

local gw = assert(testing.start{ tls = true })
io.write(string.format("bench/sidecar.lua: %g s per scenario, mock %s, %d CPUs\n", SECS, gw.url,
  tonumber(sh("nproc")) or 0))
for _, sc in ipairs(SCENARIOS) do
  if next(only) == nil or only[sc.name] then run(sc, gw) end
end
gw:stop()
os.execute("rm -rf " .. q(TMP))
