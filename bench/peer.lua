-- The Lua peers of `make bench`: one process per run, pinned to a CPU by bench/run.sh.
--
-- usage: lua5.4 bench/peer.lua PEER BASE_URL auth|mixed N [WARMUP]
-- PEER is one of
--   luasocket     socket.http's own low-level API (http.open + sendrequestline/sendheaders/
--                 receivestatusline/receiveheaders/receivebody) with the connection object reused, so
--                 the connection is kept alive; ssl.https.tcp() as the socket factory for HTTPS; cjson.
--   luasocket-close  socket.http.request / ssl.https.request (the documented one-call API: it always
--                 sends "Connection: close", so a new TCP (+TLS) connection per call); cjson.
--   ibkr          ours, the Lua layer: ibkr.new{base_url=, pacing=false} and s:auth_status() etc.
--   ibkr-meta     the same, reading meta.headers["content-type"] of every answer (the header table
--                 built from the header block: what meta costs when it is used)
--   ibkr-trace    the same with ibkr.new{trace = fn}, fn counting the events (what tracing costs)
--   core          ours, the C core directly: s:perform(method, path).
--   step-busy     ours, the non-blocking request: s:start(), req:step() until true, req:result().
--   step-sleep    the same, sleeping the wait that step() returns between steps (core.sleep).
--   coop-run      ours, cooperative: ibkr.new{cooperative=true}, the calls made in a coroutine that
--                 ibkr.run drives (it waits in poll(2) on each request's completion descriptor).
--   lcurl         Lua-cURLv3 (require "cURL", a generic libcurl binding) + lua-cjson: one reused
--                 easy handle with bench/raw.c's options and headers, a writefunction collecting
--                 the body, cjson.decode of every body. Built for Lua 5.4 outside the repository
--                 (bench/BENCHMARKS.md says how) and found in $BENCH_LCURL_DIR (lcurl.so, cURL.lua).
-- Every call checks a field of the decoded response. Prints one line:
--   peer=... scenario=... n=... wall_us=... cpu_us=... rss_kib=...
-- (per call; cpu = os.clock(), user + system; rss_kib = peak RSS, VmHWM of /proc/self/status, the same
-- kernel figure as getrusage's ru_maxrss)

local peer, base, scenario, n, warm = arg[1], arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5] or 200)
if not (peer and base and (scenario == "auth" or scenario == "mixed") and n) then
  io.stderr:write("usage: peer.lua PEER BASE_URL auth|mixed N [WARMUP]\n")
  os.exit(64)
end

-- The cycle: name, method, path, check(decoded) -> boolean
local CYCLE = {
  { "auth_status", "POST", "/iserver/auth/status", function(r) return r.authenticated == true end },
  { "reauthenticate", "POST", "/iserver/reauthenticate", function(r) return r.message == "triggered" end },
  { "logout", "POST", "/logout", function(r) return r.status == true end },
  { "sso_validate", "GET", "/sso/validate", function(r) return r.RESULT == true end },
  { "tickle", "POST", "/tickle", function(r) return type(r.session) == "string" end },
}
local calls = scenario == "auth" and { CYCLE[1] } or CYCLE
local ncalls = #calls

local function fail(c, what)
  io.stderr:write(string.format("peer %s: %s %s: %s\n", peer, c[2], c[3], tostring(what)))
  os.exit(1)
end

-- Each maker returns one(c) doing call c (a CYCLE entry) and a clock for wall time.
local makers = {}

function makers.luasocket()
  local socket = require("socket")
  local http = require("socket.http")
  local ltn12 = require("ltn12")
  local cjson = require("cjson")
  local url = require("socket.url")
  local u = url.parse(base)
  local tls = u.scheme == "https"
  local port = tonumber(u.port) or (tls and 443 or 80)
  local prefix = u.path or ""
  local create
  if tls then
    local mk = require("ssl.https").tcp() -- verify = "none" by default, like a loopback gateway
    create = function()
      local c = mk()
      -- Without TCP_NODELAY, Nagle holds the headers (a second small send) until the request line is
      -- ACKed: ~40 ms per call. socket.tcp() opens its fd lazily, so setoption needs socket.tcp4().
      c.sock = socket.tcp4()
      c.sock:setoption("tcp-nodelay", true)
      return c
    end
  else
    create = function()
      local c = socket.tcp4()
      c:setoption("tcp-nodelay", true)
      return c
    end
  end
  local h = http.open(u.host, port, create)
  local hdr_post = { host = u.host .. ":" .. port, ["user-agent"] = "lua-ibkr/0.1.0",
    accept = "application/json", ["content-length"] = "0" }
  local hdr_get = { host = hdr_post.host, ["user-agent"] = hdr_post["user-agent"], accept = hdr_post.accept }
  local function one(c)
    h:sendrequestline(c[2], prefix .. c[3])
    h:sendheaders(c[2] == "POST" and hdr_post or hdr_get)
    local code = h:receivestatusline()
    local headers = h:receiveheaders()
    local t = {}
    h:receivebody(headers, (ltn12.sink.table(t)))
    if code ~= 200 then fail(c, code) end
    local r = cjson.decode(table.concat(t))
    if not c[4](r) then fail(c, "check failed") end
  end
  return one, socket.gettime
end

makers["luasocket-close"] = function()
  local socket = require("socket")
  local ltn12 = require("ltn12")
  local cjson = require("cjson")
  local request = base:match("^https:") and require("ssl.https").request or require("socket.http").request
  local function one(c)
    local t = {}
    local headers = { accept = "application/json", ["user-agent"] = "lua-ibkr/0.1.0" }
    if c[2] == "POST" then headers["content-length"] = "0" end
    local ok, code = request{ url = base .. c[3], method = c[2], headers = headers,
      sink = ltn12.sink.table(t) }
    if not ok or code ~= 200 then fail(c, code) end
    local r = cjson.decode(table.concat(t))
    if not c[4](r) then fail(c, "check failed") end
  end
  return one, socket.gettime
end

function makers.ibkr()
  local ibkr = require("ibkr")
  local s = ibkr.new{ base_url = base, pacing = false }
  local function one(c)
    local r, err = s[c[1]](s)
    if r == nil then fail(c, err) end
    if not c[4](r) then fail(c, "check failed") end
  end
  return one, ibkr.core.monotonic
end

makers["ibkr-meta"] = function()
  local ibkr = require("ibkr")
  local s = ibkr.new{ base_url = base, pacing = false }
  local function one(c)
    local r, meta = s[c[1]](s)
    if r == nil then fail(c, meta) end
    if not c[4](r) or meta.headers["content-type"] ~= "application/json" then fail(c, "check failed") end
  end
  return one, ibkr.core.monotonic
end

makers["ibkr-trace"] = function()
  local ibkr = require("ibkr")
  local events = 0
  local s = ibkr.new{ base_url = base, pacing = false, trace = function() events = events + 1 end }
  local function one(c)
    local r, err = s[c[1]](s)
    if r == nil then fail(c, err) end
    if not c[4](r) then fail(c, "check failed") end
  end
  return one, ibkr.core.monotonic
end

-- Lua-cURLv3, the way its README uses it (cURL.easy, setopt_*, perform), set up as bench/raw.c:
-- HTTP/1.1, NOSIGNAL, no verification, TLSv1.2+, Accept-Encoding offered, TCP keep-alive, the same
-- Accept/User-Agent, a body-less POST with Content-Length: 0 and no Content-Type. The header list
-- is set once ("Content-Type:" only removes libcurl's own, which a GET does not have).
function makers.lcurl()
  local dir = os.getenv("BENCH_LCURL_DIR")
  if dir and dir ~= "" then
    package.cpath = dir .. "/?.so;" .. package.cpath
    package.path = dir .. "/?.lua;" .. package.path
  end
  local cURL = require("cURL")
  local cjson = require("cjson")
  local chunks, nchunks = {}, 0
  local e = cURL.easy{
    nosignal = true, http_version = cURL.HTTP_VERSION_1_1, sslversion = cURL.SSLVERSION_TLSv1_2,
    ssl_verifypeer = false, ssl_verifyhost = 0, accept_encoding = "", tcp_keepalive = true,
    followlocation = false, useragent = "lua-ibkr/0.1.0",
    httpheader = { "Accept: application/json", "Content-Type:" },
    writefunction = function(data)
      nchunks = nchunks + 1
      chunks[nchunks] = data
    end,
  }
  local urls = {}
  for _, c in ipairs(CYCLE) do urls[c] = base .. c[3] end
  local function one(c)
    nchunks = 0
    e:setopt_url(urls[c])
    if c[2] == "POST" then
      e:setopt_post(true)
      e:setopt_postfields("") -- also sets POSTFIELDSIZE: Content-Length: 0
    else
      e:setopt_httpget(true)
    end
    local ok, err = e:perform()
    if not ok then fail(c, err) end
    local code = e:getinfo_response_code()
    if code ~= 200 then fail(c, code) end
    local r = cjson.decode(nchunks == 1 and chunks[1] or table.concat(chunks, "", 1, nchunks))
    if not c[4](r) then fail(c, "check failed") end
  end
  return one, require("socket").gettime
end

-- the session endpoints are safe to send twice: the core may keep their connection alive
local REPEATABLE = { repeatable = true }

function makers.core()
  local core = require("ibkr.core")
  local s = core.new{ base_url = base }
  local function one(c)
    local r, err = s:perform(c[2], c[3], REPEATABLE)
    if r == nil then fail(c, err) end
    if not c[4](r) then fail(c, "check failed") end
  end
  return one, core.monotonic
end

-- The calls run inside one coroutine driven by ibkr.run: one(c) only queues c; flush() runs them.
makers["coop-run"] = function()
  local ibkr = require("ibkr")
  local s = ibkr.new{ base_url = base, pacing = false, cooperative = true }
  local queue = {}
  local function one(c) queue[#queue + 1] = c end
  local function flush()
    local co = coroutine.create(function()
      for i = 1, #queue do
        local c = queue[i]
        local r, err = s[c[1]](s)
        if r == nil then fail(c, err) end
        if not c[4](r) then fail(c, "check failed") end
      end
    end)
    assert(ibkr.run(co))
    queue = {}
  end
  return one, ibkr.core.monotonic, flush
end

local function stepper(sleep)
  local core = require("ibkr.core")
  local s = core.new{ base_url = base }
  local function one(c)
    local req, err = s:start(c[2], c[3], REPEATABLE)
    if not req then fail(c, err) end
    while true do
      local done, wait = req:step()
      if done then break end
      if sleep then core.sleep(wait) end
    end
    local r
    r, err = req:result()
    req:close()
    if r == nil then fail(c, err) end
    if not c[4](r) then fail(c, "check failed") end
  end
  return one, core.monotonic
end
makers["step-busy"] = function() return stepper(false) end
makers["step-sleep"] = function() return stepper(true) end

local make = makers[peer]
if not make then
  io.stderr:write("peer.lua: unknown peer " .. peer .. "\n")
  os.exit(64)
end
local one, clock, flush = make()
flush = flush or function() end
for i = 1, warm do one(calls[(i - 1) % ncalls + 1]) end
flush()
local w0, c0 = clock(), os.clock()
for i = 1, n do one(calls[(i - 1) % ncalls + 1]) end
flush()
local w1, c1 = clock(), os.clock()
local function peak_rss_kib()
  local f = assert(io.open("/proc/self/status", "r"))
  local kib
  for line in f:lines() do kib = kib or tonumber(line:match("^VmHWM:%s*(%d+)")) end
  f:close()
  return kib
end
io.write(string.format("peer=%s scenario=%s n=%d wall_us=%.3f cpu_us=%.3f rss_kib=%d\n", peer, scenario, n,
  (w1 - w0) * 1e6 / n, (c1 - c0) * 1e6 / n, peak_rss_kib()))
