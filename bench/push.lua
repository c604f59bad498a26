-- The push channel's figures (make bench; also alone: lua5.4 bench/push.lua [N]):
--   1. latency: a pushed sts frame (the mock's /__mock/ws/push, asked by another process) to the
--      keep-alive's on_state (keepalive{push = true} driven by ibkr.run); median and worst of N,
--      next to what REST polling at the default 60 s interval gives (half the interval on average)
--   2. death: the gateway process stopped (SIGSTOP: no heartbeat, no close) to the keep-alive's
--      state change, with heartbeat_timeout = 5
--   3. throughput: M messages written as fast as a raw server process can (no gateway logic) to one
--      stream: messages/s, client CPU per message, the longest resume; the same with 64 KiB messages
--   4. footprint: 100 sessions, each with a push channel open, in one process: RSS, descriptors and
--      threads per channel, CPU while idle
--   5. st:close() of a channel of a session that verifies certificates (the system CA bundle)
-- Prints a Markdown table (bench/BENCHMARKS.md explains it).
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
local ibkr = require("ibkr")
local core = ibkr.core
local mock = require("spec.helpers.mock")
local raw = require("spec.helpers.raw")

local N = tonumber(arg[1]) or 30
local clock = core.monotonic
local rows = {}
local function row(name, value, note)
  rows[#rows + 1] = string.format("| %s | %s | %s |", name, value, note or "")
end

local function sorted(t)
  local c = {}
  for i, v in ipairs(t) do c[i] = v end
  table.sort(c)
  return c
end
local function median(t) local c = sorted(t); return c[(#c + 1) // 2] end
local function worst(t) local c = sorted(t); return c[#c] end
local function p99(t) local c = sorted(t); return c[math.max(1, math.ceil(#c * 0.99))] end
local function ms(x) return string.format("%.2f ms", x * 1000) end

local function proc_status(pid, key)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  for line in f:lines() do
    local v = line:match("^" .. key .. ":%s+(%d+)")
    if v then f:close(); return tonumber(v) end
  end
  f:close()
end
local PID = assert(io.open("/proc/self/stat")):read("n")
local function fds()
  local p = io.popen("ls /proc/" .. PID .. "/fd | wc -l")
  local n = tonumber(p:read("a"))
  p:close()
  return n
end

-- drives the coroutines until done() (checked after every round), waiting on their pollables
local function drive(list, done, limit)
  local wake, pol = {}, {}
  local stop = clock() + (limit or 60)
  while not done() and clock() < stop do
    local fdl, evs, earliest = {}, {}, clock() + 0.05
    for _, co in ipairs(list) do
      local p = pol[co]
      local fd = p and p:pollfd() or -1
      local ready = fd >= 0 and core.poll({ fd }, 0, { p:events() }) ~= nil
      if coroutine.status(co) == "suspended" and (ready or not wake[co] or wake[co] <= clock()) then
        local ok, w, p2 = coroutine.resume(co)
        assert(ok, w)
        wake[co], pol[co], p = clock() + (tonumber(w) or 0), p2, p2
        fd = p and p:pollfd() or -1
      end
      if coroutine.status(co) == "suspended" then
        if wake[co] < earliest then earliest = wake[co] end
        if fd >= 0 then fdl[#fdl + 1], evs[#evs + 1] = fd, p:events() end
      end
    end
    local left = earliest - clock()
    if left > 0 and not done() then core.poll(fdl, left, evs) end
  end
  assert(done(), "bench: the condition never came true")
end

------------------------------------------------------------------------------------------------
-- 1. latency

-- in this process: a raw server writes the frame, the host loop waits on the keep-alive's pollable
do
  local wsserver = require("spec.helpers.wsserver")
  local srv = wsserver.new()
  local s = ibkr.new{ base_url = srv.url, pacing = false }
  local t1
  local lat = {}
  local ka = s:keepalive{ push = true, interval = 600, on_state = function(new)
    if new == "competing" then t1 = clock() end
  end }
  local p
  local function step(wait)
    local fd = p and p:pollfd() or -1
    if fd >= 0 then core.poll({ fd }, wait, { p:events() }) end
    local ok, _, p2 = coroutine.resume(ka)
    assert(ok)
    p = p2
    srv:step()
  end
  while not (srv:last() and srv:last().upgraded) do step(0.01) end
  for _ = 1, N * 10 do
    for _ = 1, 20 do step(0.001) end -- the REST check after the previous push is over
    t1 = nil
    local t0 = clock()
    srv:last():text('{"topic":"sts","args":{"competing":true}}')
    while not t1 do step(1) end
    lat[#lat + 1] = t1 - t0
  end
  row("pushed sts to on_state, median", ms(median(lat)),
    #lat .. " frames; from the server's write to on_state, one process (`keepalive{push=true}`)")
  row("pushed sts to on_state, worst", ms(worst(lat)), "")
  s:close()
  srv:close()
end

do
  local gw = assert(mock.start{ tls = false, pacing = false, ws_greeting_delay = 0 })
  local s = gw:session()
  local got = {}
  local ka = s:keepalive{ push = true, interval = 600, on_state = function(new)
    if new == "competing" then got[#got + 1] = clock() end
  end }
  drive({ ka }, function() return gw:ws().counters.greeted == 1 end)
  -- another process asks the mock to push, N times, 1.2 s apart (the keep-alive's REST check after
  -- each push sees the session ready again, paced at one tickle a second), printing each time
  local script = raw.PRELUDE .. [[
    local core = require("ibkr.core")
    local http = require("socket.http")
    local ltn12 = require("ltn12")
    local root, n = arg[1], tonumber(arg[2])
    local body = '{"message":{"topic":"sts","args":{"competing":true}}}'
    for _ = 1, n do
      core.sleep(1.2)
      local t0 = core.monotonic()
      http.request{ url = root .. "/__mock/ws/push", method = "POST", source = ltn12.source.string(body),
        headers = { ["content-type"] = "application/json", ["content-length"] = #body },
        sink = ltn12.sink.null() }
      print(string.format("%.6f", t0)); io.stdout:flush()
    end
  ]]
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w")); f:write(script); f:close()
  local p = assert(io.popen("env -u LD_PRELOAD lua5.4 " .. tmp .. " " .. gw.root .. " " .. N))
  drive({ ka }, function() return #got >= N end, N * 3)
  local sent = {}
  for _ = 1, N do sent[#sent + 1] = tonumber(p:read("l")) end
  p:close()
  os.remove(tmp)
  local lat = {}
  for i = 1, N do lat[i] = got[i] - sent[i] end
  row("mock's push to on_state, median", ms(median(lat)),
    N .. " pushes; from the push request (another process, HTTP) through the mock to on_state")
  row("mock's push to on_state, worst", ms(worst(lat)), "")
  row("the same by REST polling (interval 60 s)", "30 s average, 60 s worst", "a tickle a minute")
  s:stop()
  s:close()

  -- 2. death: SIGSTOP the gateway (no heartbeat, no close)
  local s2 = gw:session()
  local st2, t2 = nil, nil
  local ka2 = s2:keepalive{ interval = 600, push = { heartbeat_timeout = 5 }, on_state = function(new)
    if new ~= "ready" then st2, t2 = new, clock() end
  end }
  drive({ ka2 }, function() return gw:ws().counters.greeted >= 2 end)
  local t0 = clock()
  os.execute("kill -STOP " .. gw.pid)
  drive({ ka2 }, function() return st2 ~= nil end, 30)
  os.execute("kill -CONT " .. gw.pid)
  row("gateway stopped (no heartbeat, no close) to the state change", string.format("%.2f s", t2 - t0),
    "heartbeat_timeout = 5 s; state " .. st2 .. " (bound: heartbeat_timeout + 1 s)")
  s2:close()
  gw:stop()
end

------------------------------------------------------------------------------------------------
-- 3. throughput: a raw server process (bench/push_server.lua) writes M frames at once on the
-- subscription (bench/ibind_ws.py measures ibind's IbkrWsClient against the same server)

local function throughput(m, size, shape)
  local p = assert(io.popen("echo $$; exec env -u LD_PRELOAD lua5.4 bench/push_server.lua " .. m .. " "
    .. size .. " " .. (shape or "")))
  local pid = tonumber(p:read("l"))
  local port = tonumber(p:read("l"))
  local s = ibkr.new{ base_url = "http://127.0.0.1:" .. port .. "/v1/api" }
  local n, first, last = 0, nil, nil
  local st = s:stream{ topics = { 'smd+265598+{"fields":["31","84","86"]}' }, max_message = 1 << 20,
    on_message = function(msg)
      if msg.topic == "smd+265598" then
        n = n + 1
        if n == 1 then first = clock() end
        last = clock()
      end
    end }
  local co = st:coroutine()
  local walls, cpus = {}, {}
  local cpu0
  while n < m do
    local r0, c0 = clock(), os.clock()
    local ok, w = coroutine.resume(co)
    assert(ok, w)
    if n > 0 then
      cpu0 = cpu0 or c0
      walls[#walls + 1], cpus[#cpus + 1] = clock() - r0, os.clock() - c0
    end
    local fd = st:pollfd()
    if w > 0 and fd >= 0 then core.poll({ fd }, math.min(w, 1), { st:events() }) end
  end
  local cpu = os.clock() - cpu0
  st:close()
  s:close()
  os.execute("kill " .. pid)
  p:close()
  local wall = last - first
  return m / wall, cpu / m, { median(cpus), p99(cpus), worst(cpus) },
    { median(walls), p99(walls), worst(walls) }
end

do
  local M = 200000
  local function three(t) return ms(t[1]) .. ", " .. ms(t[2]) .. ", " .. ms(t[3]) end
  local rate, cpu, rc, rw = throughput(M, 200)
  row("messages/s on one channel (200 B messages)", string.format("%.0f", rate), M .. " messages")
  row("client CPU per message (200 B)", string.format("%.2f µs", cpu * 1e6), "framing, decode, on_message")
  row("one resume's CPU (200 B): median, p99, max", three(rc),
    "a resume reads 16 KiB at most and yields after 0.5 ms")
  row("one resume's wall time (200 B): median, p99, max", three(rw),
    "the rest is the process waiting for a CPU (2 shared)")
  local M2 = 2000
  rate, cpu, rc, rw = throughput(M2, 64 * 1024)
  row("messages/s on one channel (64 KiB messages)", string.format("%.0f", rate), M2 .. " messages")
  row("client CPU per message (64 KiB)", string.format("%.1f µs", cpu * 1e6), "")
  row("one resume's CPU (64 KiB): median, p99, max", three(rc),
    "a large message is decoded alone in a resume")
  row("one resume's wall time (64 KiB): median, p99, max", three(rw), "")
  rate, cpu, rc, rw = throughput(M2, 64 * 1024, "fields")
  row("messages/s on one channel (64 KiB of 2,300 small fields)", string.format("%.0f", rate),
    M2 .. " messages")
  row("client CPU per message (64 KiB of fields)", string.format("%.1f µs", cpu * 1e6), "mostly the decode")
  row("one resume's CPU (64 KiB of fields): median, p99, max", three(rc), "")
  row("one resume's wall time (64 KiB of fields): median, p99, max", three(rw), "")
end

------------------------------------------------------------------------------------------------
-- 5. closing a channel of a session that verifies certificates against the system CA bundle: the
-- connection (its CA store, 1-2 ms to free) is ended on the engine thread, not in st:close()

do
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. raw.q(d) .. " && env -u LD_PRELOAD openssl req -x509 -newkey rsa:2048"
    .. " -nodes -keyout " .. raw.q(d .. "/key.pem") .. " -out " .. raw.q(d .. "/cert.pem") .. " -days 2"
    .. " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null"
    .. " && cat /etc/ssl/certs/ca-certificates.crt " .. raw.q(d .. "/cert.pem")
    .. " > " .. raw.q(d .. "/bundle.pem")))
  local gw = assert(mock.start{ tls = true, pacing = false, ws_greeting_delay = 0,
    args = { "--cert", d .. "/cert.pem", "--key", d .. "/key.pem" } })
  local times = {}
  for _ = 1, N do
    local s = ibkr.new{ base_url = gw.url, ca_file = d .. "/bundle.pem", pacing = false }
    local open = false
    local st = s:stream{ on_message = function(m)
      if m.topic == "system" and m.success then open = true end
    end }
    drive({ st:coroutine() }, function() return open end)
    local t0 = clock()
    st:close()
    times[#times + 1] = clock() - t0
    s:close()
  end
  gw:stop()
  os.execute("rm -rf " .. raw.q(d))
  row("st:close() of a verified TLS channel (system CA bundle): median, worst", ms(median(times)) .. ", "
    .. ms(worst(times)), N .. " channels; the close itself runs on the engine thread")
end

------------------------------------------------------------------------------------------------
-- 4. footprint: 100 sessions, each with a channel

do
  local K = 100
  local gw = assert(mock.start{ pacing = false, ws_greeting_delay = 0, config = { ws_max_clients = 1000 } })
  collectgarbage()
  local rss0, fd0, th0 = proc_status("self", "VmRSS"), fds(), proc_status("self", "Threads")
  local sessions, streams, cos, open = {}, {}, {}, 0
  for i = 1, K do
    sessions[i] = gw:session{ pacing = false }
    streams[i] = sessions[i]:stream{ on_message = function(m)
      if m.topic == "system" and m.success then open = open + 1 end
    end }
    cos[i] = streams[i]:coroutine()
  end
  drive(cos, function() return open >= K end, 120)
  collectgarbage()
  local rss1, fd1, th1 = proc_status("self", "VmRSS"), fds(), proc_status("self", "Threads")
  local c0 = os.clock()
  ibkr.run(cos, { duration = 20 }) -- heartbeats every 10 s each, a tic every 50 s each
  local idle = os.clock() - c0
  row(K .. " sessions with a channel: RSS per channel", string.format("%.0f KiB", (rss1 - rss0) / K),
    "session, stream, connection, TLS")
  row(K .. " sessions with a channel: descriptors per channel", string.format("%.1f", (fd1 - fd0) / K), "")
  row(K .. " sessions with a channel: threads", tostring(th1), "before: " .. th0)
  row(K .. " sessions with a channel: CPU while idle", string.format("%.2f ms/s", idle / 20 * 1000),
    "ibkr.run; heartbeats every 10 s each")
  for i = 1, K do streams[i]:close(); sessions[i]:close() end
  gw:stop()
end

print("| push channel | figure | notes |")
print("|---|---|---|")
for _, r in ipairs(rows) do print(r) end
