-- memcheck.lua [CALLS]: CALLS (default 10000) calls against the mock gateway (HTTP and HTTPS) that
-- luacheck: no unused args
-- go through every path of the module: the blocking core call, the stepped request, the ibkr
-- session calls, the keep-alive coroutine, and every error kind (connect, timeout, tls, http,
-- json, too_large, protocol, closed, busy, rate_limited), plus a request abandoned to the GC and a
-- keep-alive closed mid-request. Made for `valgrind --leak-check=full lua5.4 spec/c/memcheck.lua`
-- (make check-memory); prints the calls per outcome and exits non-zero if a kind never occurred
-- or an outcome was not the expected one.
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
local mock = require("spec.helpers.mock")
local ibkr = require("ibkr")
local core = ibkr.core

local N = tonumber(arg[1]) or 10000
local plain = assert(mock.start{ tls = false, pacing = false })
local tls = assert(mock.start{ tls = true, pacing = false })

local tally, calls = {}, 0
-- generous timeouts where a TLS handshake runs: valgrind makes it 20-50x slower
local function expect(kind, r, err)
  calls = calls + 1
  local got = r ~= nil and "ok" or (err and err.kind or "nil")
  if got ~= kind then
    error(string.format("call %d: expected %s, got %s (%s)", calls, kind, got, tostring(err)), 2)
  end
  tally[kind] = (tally[kind] or 0) + 1
end

local sessions = {
  core.new{ base_url = plain.url, timeout = 60, connect_timeout = 60 },
  core.new{ base_url = tls.url, timeout = 60, connect_timeout = 60 },
}
local users = {
  ibkr.new{ base_url = plain.url, pacing = false, retries = 0 },
  ibkr.new{ base_url = tls.url, pacing = false, retries = 0 },
}
local mocks = { plain, tls }

-- the closed port: a listener's port, freed
local refused_url
do
  local socket = require("socket")
  local l = assert(socket.bind("127.0.0.1", 0))
  local _, port = l:getsockname()
  l:close()
  refused_url = "http://127.0.0.1:" .. port .. "/v1/api"
end

local function stepped(s, method, path, opts)
  local req = assert(s:start(method, path, opts))
  while not req:step() do req:wait(0.01) end
  local r, err, st = req:result()
  req:close()
  return r, err, st
end

local function keepalive_ticks(u, n)
  local co = u:keepalive{ interval = 0.001, retry_interval = 0.001 }
  for _ = 1, n do
    local ok, _, req = coroutine.resume(co)
    assert(ok)
    -- a request in flight is yielded as the second value (a pollable)
    while coroutine.status(co) == "suspended" and req do
      assert(req:wait(5))
      ok, _, req = coroutine.resume(co)
      assert(ok)
    end
  end
  assert(coroutine.close(co))
end

local scenarios = {
  function(m, s) expect("ok", s:perform("POST", "/tickle")) end,
  function(m, s) expect("ok", stepped(s, "POST", "/iserver/auth/status")) end,
  function(m, s, u) expect("ok", u:tickle()) end,
  function(m, s, u) expect("ok", u:sso_validate()) end,
  function(m, s)
    expect("ok", s:perform("GET", "/sso/validate", { query = { a = "1", b = { "x", "y" } } }))
  end,
  function(m, s) expect("ok", s:perform("POST", "/iserver/auth/ssodh/init",
    { body = { publish = true, compete = false } })) end,
  function(m, s)
    m:fault{ path = "/tickle", kind = "status", status = 500 }
    expect("http", s:perform("POST", "/tickle"))
  end,
  function(m, s)
    m:fault{ path = "/tickle", kind = "status", status = 429, headers = { ["Retry-After"] = "3" } }
    expect("http", stepped(s, "POST", "/tickle"))
  end,
  function(m, s)
    m:fault{ path = "/tickle", kind = "html" }
    expect("json", s:perform("POST", "/tickle"))
  end,
  function(m, s)
    m:fault{ path = "/tickle", kind = "deep", depth = 10000 }
    expect("json", stepped(s, "POST", "/tickle"))
  end,
  function(m, s, u)
    m:fault{ path = "/tickle", kind = "drop", when = "mid" }
    expect("protocol", u:tickle())
  end,
  function(m)
    -- on a fresh connection: on a reused one libcurl silently sends the request again
    local s = core.new{ base_url = m.url }
    m:fault{ path = "/tickle", kind = "drop", when = "before" }
    expect("protocol", s:perform("POST", "/tickle"))
    s:close()
  end,
  function(m, s)
    m:fault{ path = "/tickle", kind = "gzip" }
    expect("ok", s:perform("POST", "/tickle"))
  end,
  function(m, s)
    m:fault{ path = "/tickle", kind = "chunked" }
    expect("ok", stepped(s, "POST", "/tickle"))
  end,
  function(m)
    local s = core.new{ base_url = m.url, max_body = 1024 }
    m:fault{ path = "/tickle", kind = "huge", bytes = 100000 }
    expect("too_large", s:perform("POST", "/tickle"))
    s:close()
  end,
  function()
    local s = core.new{ base_url = refused_url }
    expect("connect", s:perform("POST", "/tickle"))
    expect("connect", stepped(s, "POST", "/tickle"))
  end,
  function(m)
    local s = core.new{ base_url = m.url }
    s:close()
    expect("closed", s:perform("POST", "/tickle"))
    expect("closed", s:start("POST", "/tickle"))
  end,
  function(m, s)
    -- requests side by side on one session; "busy" only from a result asked for too early
    m:fault{ path = "/tickle", kind = "hold" } -- its answer held until released: still in flight below
    local req = assert(s:start("POST", "/tickle"))
    m:await_held()
    expect("ok", s:perform("POST", "/iserver/auth/status"))
    expect("busy", req:result())
    m:release()
    req:wait(5)
    expect("ok", req:result())
    req:close()
  end,
  function(m)
    local u = ibkr.new{ base_url = m.url, retries = 0 }
    expect("ok", u:sso_validate())
    expect("rate_limited", u:sso_validate())
    u:close()
    expect("closed", u:tickle())
  end,
  function(m, s)
    -- a request in flight abandoned to the garbage collector, then the session too
    local s2 = core.new{ base_url = m.url }
    s2:start("POST", "/tickle"):step()
    s2 = nil -- luacheck: ignore s2
    collectgarbage()
    expect("ok", s:perform("POST", "/tickle"))
  end,
  function(m, s, u)
    keepalive_ticks(u, 3)
    calls = calls + 2
    expect("ok", u:tickle())
  end,
  function(m, s, u)
    -- the keep-alive closed while its request is in flight
    m:fault{ path = "/tickle", kind = "delay", seconds = 0.2 }
    local co = u:keepalive{ interval = 1 }
    local ok, _, req = coroutine.resume(co)
    assert(ok and req and not req:done())
    assert(coroutine.close(co))
    assert(req:done() and req:pollfd() == -1, "the request in flight was not freed")
    m:clear_faults()
    expect("ok", s:perform("POST", "/tickle"))
  end,
  function(m)
    -- the warm lane: exchanges run on this thread; one closed, one left to the garbage collector
    -- and one under a session closed mid-flight (each with the descriptor a waiter would watch)
    local w = core.new{ base_url = m.url, timeout = 60, connect_timeout = 60 }
    local REP = { repeatable = true }
    for _ = 1, 3 do expect("ok", stepped(w, "POST", "/tickle", REP)) end
    m:fault{ path = "/tickle", kind = "delay", seconds = 0.05 }
    local a = assert(w:start("POST", "/tickle", REP))
    a:pollfd()
    a:close()
    expect("ok", stepped(w, "GET", "/sso/validate"))
    m:fault{ path = "/tickle", kind = "delay", seconds = 0.05 }
    assert(w:start("POST", "/tickle", REP)):pollfd()
    collectgarbage()
    expect("ok", stepped(w, "POST", "/iserver/auth/status", REP))
    m:fault{ path = "/tickle", kind = "delay", seconds = 0.05 }
    local c = assert(w:start("POST", "/tickle", REP))
    c:pollfd()
    w:close()
    c:step()
    expect("closed", c:result())
    c:close()
    m:clear_faults()
  end,
}

-- rarer, slower ones: timeouts and TLS failures (a handshake each)
local rare = {
  function(m)
    local s = core.new{ base_url = m.url, timeout = 0.05 }
    m:fault{ path = "/tickle", kind = "delay", seconds = 1 }
    expect("timeout", s:perform("POST", "/tickle"))
    s:close()
    m:clear_faults()
  end,
  function()
    local s = core.new{ base_url = tls.url, verify = true, connect_timeout = 60, timeout = 60 }
    expect("tls", s:perform("POST", "/tickle"))
  end,
  function()
    local s = core.new{ base_url = tls.url, ca_file = "/nonexistent/ca.pem", connect_timeout = 60,
      timeout = 60 }
    expect("tls", stepped(s, "POST", "/tickle"))
  end,
}

local i = 0
while calls < N do
  i = i + 1
  local k = (i - 1) % 2 + 1
  if i % 97 == 0 then
    rare[(i // 97 - 1) % #rare + 1](mocks[k], sessions[k], users[k])
  else
    scenarios[(i - 1) % #scenarios + 1](mocks[k], sessions[k], users[k])
  end
  if i % 500 == 0 then collectgarbage() end
end

for _, s in ipairs(sessions) do s:close() end
for _, u in ipairs(users) do u:close() end
plain:stop()
tls:stop()
collectgarbage()

local kinds = { "ok", "connect", "timeout", "tls", "http", "json", "too_large", "protocol", "closed", "busy",
  "rate_limited" }
local missing = {}
for _, k in ipairs(kinds) do
  io.write(string.format("%-12s %6d\n", k, tally[k] or 0))
  if not tally[k] then missing[#missing + 1] = k end
end
print(string.format("%d calls", calls))
if #missing > 0 then
  io.stderr:write("never happened: " .. table.concat(missing, ", ") .. "\n")
  os.exit(1)
end
