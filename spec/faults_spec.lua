-- The fault matrix: every fault against the mock gateway's /__mock/fault injection (or a
-- real closed port, a real TLS mismatch), over HTTP and HTTPS, through four paths:
--   perform    ibkr.core session:perform (blocking)
--   step       ibkr.core session:start + request:step/result (non-blocking)
--   ibkr       the ibkr session call (s:tickle(), retries off so the fault is what comes back)
--   keepalive  the keep-alive coroutine (its on_error sees the error)
-- For each: the documented error kind (or a raised programmer error), the session usable for the
-- next call, the keep-alive still running. The process being alive is the spec itself running.
-- The matrix is printed at the end.
local core = require("ibkr.core")
local ibkr = require("ibkr")
local mock = require("spec.helpers.mock")

local PATHS = { "perform", "step", "ibkr", "keepalive" }
local TRANSPORTS = { "http", "https" }
local matrix, order = {}, {}

local function cell(name, col, text)
  if not matrix[name] then
    matrix[name] = {}
    order[#order + 1] = name
  end
  matrix[name][col] = text
end

local function print_matrix()
  local cols = {}
  for _, t in ipairs(TRANSPORTS) do
    for _, p in ipairs(PATHS) do cols[#cols + 1] = t .. ":" .. p end
  end
  local w = 38
  local out = { "", "fault matrix (ok = outcome as documented, next call fine, keep-alive running)" }
  local head = string.format("%-" .. w .. "s", "fault")
  for _, c in ipairs(cols) do head = head .. string.format(" %-16s", c) end
  out[#out + 1] = head
  out[#out + 1] = string.rep("-", #head)
  local n, bad = 0, 0
  for _, name in ipairs(order) do
    local line = string.format("%-" .. w .. "s", name)
    for _, c in ipairs(cols) do
      local v = matrix[name][c] or "-"
      if v ~= "-" and v ~= "n/a" then
        n = n + 1
        if v:sub(1, 4) == "FAIL" then bad = bad + 1 end
      end
      line = line .. string.format(" %-16s", v)
    end
    out[#out + 1] = line
  end
  out[#out + 1] = string.format("%d fault runs, %d failed, %d faults", n, bad, #order)
  io.stdout:write(table.concat(out, "\n"), "\n")
end

-- the timeout of the rows whose answer is late (their next call must fit in it)
local SHORT = 0.5 * (tonumber(os.getenv("IBKR_TIME_SCALE")) or 1)

-- a port with nothing listening, that no other server takes meanwhile
local free_port = require("spec.helpers.raw").spare_port

-- Drives keep-alive coroutine `co` of session u until u made `n` more requests.
local function drive(co, u, n)
  local target = u:stats().requests + n
  local deadline = core.monotonic() + 20
  while u:stats().requests < target do
    local ok, wait = coroutine.resume(co)
    assert(ok, wait)
    assert(coroutine.status(co) == "suspended", "keep-alive ended")
    assert(core.monotonic() < deadline, "keep-alive made no progress")
    if wait and wait > 0 then core.sleep(math.min(wait, 0.01)) end -- the wait it asked for
  end
end

local function kind_of(r, err)
  if r ~= nil then return "ok" end
  return err and err.kind or "nil"
end

-- Runs one call through `path` on a fresh session; returns the outcome kind, the error, and a
-- `next` function checking that the same session (or keep-alive) works afterwards.
local function through(path, url, sopts, call)
  sopts = sopts or {}
  call = call or { "POST", "/tickle" }
  if path == "perform" or path == "step" then
    local o = { base_url = url }
    for k, v in pairs(sopts) do o[k] = v end
    local s = core.new(o)
    local r, err
    if path == "perform" then
      r, err = s:perform(call[1], call[2], call[3])
    else
      local req = assert(s:start(call[1], call[2], call[3]))
      local deadline = core.monotonic() + 20
      while not req:step() do
        assert(core.monotonic() < deadline)
        req:wait(0.01)
      end
      r, err = req:result()
      req:close()
    end
    return kind_of(r, err), err, function()
      assert(not s:busy(), "session left busy")
      return kind_of(s:perform("POST", "/tickle"))
    end, s, r
  elseif path == "ibkr" then
    local o = { base_url = url, retries = 0, pacing = false }
    for k, v in pairs(sopts) do o[k] = v end
    local u = ibkr.new(o)
    local r, err = u:request(call[1], call[2], call[3])
    return kind_of(r, err), err, function() return kind_of(u:tickle()) end, u, r
  else -- keepalive
    local o = { base_url = url, retries = 0, pacing = false }
    for k, v in pairs(sopts) do o[k] = v end
    local u = ibkr.new(o)
    local errs = {}
    local co = u:keepalive{ interval = 0.01, retry_interval = 0.01,
      on_error = function(e) errs[#errs + 1] = e end }
    drive(co, u, 1)
    local err = errs[1]
    return err and err.kind or "ok", err, function(mode, min_hold)
      local before = #errs
      if mode == "held" then
        -- held back by the gateway's Retry-After (or a 429 without one): resumed early, it sends
        -- nothing and sleeps again
        local requests = u:stats().requests
        local ok, wait = coroutine.resume(co)
        assert(ok, wait)
        assert(u:stats().requests == requests, "sent a request while held")
        assert(wait >= (min_hold or 590), "slept only " .. tostring(wait))
        return "held"
      end
      drive(co, u, 1)
      assert(coroutine.status(co) == "suspended", "keep-alive ended")
      return #errs == before and "ok" or errs[#errs].kind
    end, u
  end
end

-- The faults. expect: the kind (or "ok"); check(err, r, m): extra assertions; next: the kind the
-- following call gets (default "ok"); tls_only; opts: session options; fault: the mock fault.
local FAULTS = {
  { name = "reset before the response", fault = { kind = "drop", when = "before" }, expect = "protocol" },
  { name = "reset mid-body", fault = { kind = "drop", when = "mid" }, expect = "protocol" },
  -- (the answers come 30 s late, so the timeout always comes first; the same session's next call,
  -- on a new connection, must fit in it: IBKR_TIME_SCALE for the sanitizer build)
  { name = "slow headers past the timeout", fault = { kind = "delay", seconds = 30 },
    opts = { timeout = SHORT }, expect = "timeout" },
  { name = "slow body within the timeout", fault = { kind = "delay_body", seconds = 0.2 }, expect = "ok" },
  { name = "slow body past the timeout", fault = { kind = "delay_body", seconds = 30 },
    opts = { timeout = SHORT }, expect = "timeout" },
  { name = "HTML body (200)", fault = { kind = "html" }, expect = "json",
    check = function(e) assert(e.status == 200 and e.body:find("<html", 1, true)) end },
  { name = "empty body on a JSON endpoint", fault = { kind = "empty" }, expect = "ok",
    check = function(_, r) if r then assert.are.same({}, r) end end },
  { name = "truncated JSON", fault = { kind = "truncated" }, expect = "json" },
  { name = "malformed JSON", fault = { kind = "malformed" }, expect = "json" },
  { name = "JSON nested 10,000 deep", fault = { kind = "deep", depth = 10000 }, expect = "json" },
  { name = "body > max_body (2 MiB vs 64 KiB)", fault = { kind = "huge", bytes = 2 * 1024 * 1024 },
    opts = { max_body = 65536 }, expect = "too_large" },
  { name = "invalid UTF-8 in a string", fault = { kind = "invalid_utf8" }, expect = "ok",
    check = function(_, r) if r then assert(r.message:find("\255\254", 1, true)) end end },
  { name = "chunked encoding", fault = { kind = "chunked" }, expect = "ok" },
  { name = "gzip encoding", fault = { kind = "gzip" }, expect = "ok" },
  { name = "redirect to file:///etc/passwd", fault = { kind = "redirect", location = "file:///etc/passwd" },
    expect = "http",
    check = function(e) assert(e.status == 302 and e.location == "file:///etc/passwd") end },
  { name = "redirect to another host", fault = { kind = "redirect", status = 301,
    location = "http://gateway.example.invalid/v1/api/tickle" }, expect = "http",
    check = function(e) assert(e.status == 301 and e.location:find("example.invalid", 1, true)) end },
}
-- What real gateways send (see spec/gateway_answers_spec.lua for the policy around it).
local state = require("ibkr.state")
local function no_session(e) assert(state.of_error(e) == "no_session", "state " .. state.of_error(e)) end
local function connection_close(m, on) m:config{ connection_close = on } end
local GATEWAY = {
  { name = "200 with an error body (failed tickle)", fault = { kind = "error_body" },
    expect = { "ok", keepalive = "http" }, -- a successful call; the keep-alive judges the body
    check = function(e, _, _, p)
      if p == "keepalive" then
        assert(e.status == 200 and e.message:find("failed to process request", 1, true))
      end
    end },
  { name = "302 to /sso/Login (login loop)", fault = { kind = "redirect" }, expect = "http",
    check = no_session },
  { name = "302 to /sso/Dispatcher", fault = { kind = "redirect", location = "/sso/Dispatcher" },
    expect = "http", check = no_session },
  { name = "HTML error page (403 Access Denied)",
    fault = { kind = "html", status = 403, title = "Access Denied" }, expect = "http",
    check = function(e) assert(e.status == 403 and e.body:find("Access Denied", 1, true)) end },
  { name = "Retry-After penalty box (429, 600 s)",
    fault = { kind = "status", status = 429, body = '{"error":"Too many requests"}',
      headers = { ["Retry-After"] = "600" } },
    expect = "http", next = { ibkr = "rate_limited", keepalive = "held" },
    check = function(e) assert(e.status == 429 and e.retry_after == 600) end },
  -- count = 2: libcurl itself resends once when a connection it reused dies before any answer
  -- (the engine's shared connection cache may hold one from an earlier row); a fresh connection
  -- that drops is the gateway's case, and the second drop makes sure the core sees one.
  { name = "dropped, no response, Connection: close",
    fault = { kind = "drop", when = "before", count = 2 },
    setup = function(m) connection_close(m, true) end,
    teardown = function(m) connection_close(m, false) end,
    opts = { retries = 2 }, call = { "GET", "/tickle" },
    expect = { "protocol", ibkr = "ok", keepalive = "ok" } }, -- retried where it is safe to repeat
  { name = "503 after the backend timeout (1 s)", fault = { kind = "backend_timeout", seconds = 1 },
    opts = { timeout = 10 }, expect = "http", check = function(e) assert(e.status == 503) end },
}
for _, f in ipairs(GATEWAY) do FAULTS[#FAULTS + 1] = f end

for _, st in ipairs{ 401, 403, 404, 411, 429, 500, 502, 503 } do
  FAULTS[#FAULTS + 1] = { name = "HTTP " .. st, fault = { kind = "status", status = st }, expect = "http",
    check = function(e) assert(e.status == st and e.retry_after == nil) end }
  if st == 429 then
    -- a 429 without Retry-After holds back every call of the session too, for a growing time
    -- (60 s the first time: IBKR's penalty box grows with every request; docs/ibkr.md)
    FAULTS[#FAULTS].next = { ibkr = "rate_limited", keepalive = "held" }
    FAULTS[#FAULTS].min_hold = 59
  end
end
-- A Retry-After holds back every call of an ibkr session until then: its next call is refused
-- without sending ("rate_limited"); the keep-alive sleeps until then and reports the refusals of
-- a driver that resumes it early. The core itself has no such policy.
for _, st in ipairs{ 429, 503 } do
  FAULTS[#FAULTS + 1] = { name = "HTTP " .. st .. " with Retry-After: 1",
    fault = { kind = "status", status = st, headers = { ["Retry-After"] = "1" } }, expect = "http",
    next = { ibkr = "rate_limited", keepalive = "rate_limited" },
    check = function(e) assert(e.status == st and e.retry_after == 1) end }
end

local function run_row(t, m, f)
  local failures = {}
  for _, p in ipairs(PATHS) do
    local col = t .. ":" .. p
    if f.tls_only and t ~= "https" then
      cell(f.name, col, "n/a")
    else
      local ok, res = pcall(function()
        if f.setup then f.setup(m) end
        if f.fault then
          local spec = { path = "/tickle" }
          for k, v in pairs(f.fault) do spec[k] = v end
          m:fault(spec)
        end
        local kind, err, next_call, _, r = through(p, f.url or m.url, f.opts, f.call)
        m:clear_faults()
        if f.teardown then f.teardown(m) end
        local expect = f.expect
        if type(expect) == "table" then expect = expect[p] or expect[1] end
        assert(kind == expect, "got " .. kind .. ": " .. tostring(err))
        if f.check then f.check(err, r, m, p) end
        local want = f.next or "ok"
        if type(want) == "table" then want = want[p] or "ok" end
        local nk = next_call(want == "held" and "held" or nil, f.min_hold)
        assert(nk == want, "next call: " .. nk)
        return kind
      end)
      if ok then
        cell(f.name, col, "ok " .. res)
      else
        cell(f.name, col, "FAIL")
        failures[#failures + 1] = col .. ": " .. tostring(res)
      end
    end
  end
  assert(#failures == 0, table.concat(failures, "\n"))
end

describe("fault matrix", function()
  teardown(print_matrix)

  for _, t in ipairs(TRANSPORTS) do
    describe("over " .. t, function()
      local m
      setup(function()
        m = assert(mock.start{ tls = t == "https", pacing = false })
      end)
      teardown(function()
        if m then m:stop() end
      end)
      after_each(function()
        if m then
          m:clear_faults()
          m:release() -- the answers held by a spec that ended
        end
      end)

      for _, f in ipairs(FAULTS) do
        it(f.name, function() run_row(t, m, f) end)
      end

      it("connection refused, then the gateway comes up on that port", function()
        local port = free_port()
        local url = string.format("%s://127.0.0.1:%d/v1/api", t, port)
        local nexts, failures = {}, {}
        for _, p in ipairs(PATHS) do
          local kind, err, next_call = through(p, url, {})
          if kind == "connect" then
            nexts[p] = next_call
          else
            cell("connection refused", t .. ":" .. p, "FAIL")
            failures[#failures + 1] = p .. ": got " .. kind .. " " .. tostring(err)
          end
        end
        local m2 = assert(mock.start{ tls = t == "https", pacing = false,
          args = { "--port", tostring(port) } })
        for p, next_call in pairs(nexts) do
          local ok, nk = pcall(next_call)
          if ok and nk == "ok" then
            cell("connection refused", t .. ":" .. p, "ok connect")
          else
            cell("connection refused", t .. ":" .. p, "FAIL")
            failures[#failures + 1] = p .. ": next call " .. tostring(nk)
          end
        end
        m2:stop()
        assert(#failures == 0, table.concat(failures, "\n"))
      end)

      it("TLS with verify on against the self-signed certificate", function()
        if t ~= "https" then
          for _, p in ipairs(PATHS) do cell("TLS verify on, self-signed cert", t .. ":" .. p, "n/a") end
          return
        end
        -- (connect_timeout 30: reading the system's CA bundle and the handshake take their time on
        -- a loaded machine, under ASan more; the refusal comes at the handshake, never a timeout)
        run_row(t, m, { name = "TLS verify on, self-signed cert",
          opts = { verify = true, connect_timeout = 30 }, expect = "tls", next = "tls" })
      end)

      it("a wrong ca_file (missing file; a CA bundle that did not sign the cert)", function()
        if t ~= "https" then
          for _, p in ipairs(PATHS) do
            cell("ca_file missing", t .. ":" .. p, "n/a")
            cell("ca_file of other CAs", t .. ":" .. p, "n/a")
          end
          return
        end
        run_row(t, m, { name = "ca_file missing",
          opts = { ca_file = "/nonexistent/ca.pem", connect_timeout = 30 }, expect = "tls", next = "tls" })
        run_row(t, m, { name = "ca_file of other CAs",
          opts = { ca_file = "/etc/ssl/certs/ca-certificates.crt", connect_timeout = 30 },
          expect = "tls", next = "tls" })
      end)

      it("header injection attempts raise programmer errors; query values are percent-encoded", function()
        local name = "CR/LF/NUL in header, path, query"
        local bad = { "a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\0b" }
        local failures = {}
        local function raises(col, fn)
          local ok = pcall(fn)
          if ok then failures[#failures + 1] = col .. ": did not raise" end
        end
        -- core: per-call header values and names, session headers, path, path query
        local s = core.new{ base_url = m.url }
        for _, v in ipairs(bad) do
          raises("perform header", function() s:perform("GET", "/sso/validate", { headers = { X = v } }) end)
          raises("perform header name", function()
            s:perform("GET", "/sso/validate", { headers = { [v] = "1" } })
          end)
          raises("step header", function() s:start("GET", "/sso/validate", { headers = { X = v } }) end)
          raises("perform path", function() s:perform("GET", "/sso/validate" .. v) end)
          raises("step path", function() s:start("GET", "/sso/" .. v) end)
          raises("path query", function() s:perform("GET", "/sso/validate?x=" .. v) end)
          raises("core.new headers", function() core.new{ base_url = m.url, headers = { X = v } } end)
          raises("ibkr.new headers", function() ibkr.new{ base_url = m.url, headers = { X = v } } end)
          raises("ibkr.new user_agent", function() ibkr.new{ base_url = m.url, user_agent = v } end)
          raises("ibkr request header", function()
            local u = ibkr.new{ base_url = m.url, pacing = false }
            u:request("GET", "/sso/validate", { headers = { X = v } })
          end)
          raises("ibkr request path", function()
            ibkr.new{ base_url = m.url, pacing = false }:request("GET", "/sso/validate" .. v)
          end)
        end
        assert.is_false(s:busy())
        -- query table values are data, not syntax: they go out percent-encoded
        m:clear_log()
        assert(s:perform("GET", "/sso/validate", { query = { x = "a\r\nX-Injected: 1\0" } }))
        local log = m:log()
        local q = log[#log].query
        assert.are.equal("x=a%0D%0AX-Injected%3A%201%00", q)
        assert(s:perform("POST", "/tickle"))
        -- the keep-alive takes no user input per request; its session's headers are checked at ibkr.new
        for _, p in ipairs(PATHS) do
          local ok_text = p == "keepalive" and "ok (at new)" or "ok raised"
          cell(name, t .. ":" .. p, #failures == 0 and ok_text or "FAIL")
        end
        assert(#failures == 0, table.concat(failures, "\n"))
      end)

      it("the session closed during a request", function()
        local name = "session closed during a request"
        local u
        -- perform blocks the only Lua thread: nothing can close the session under it
        cell(name, t .. ":perform", "n/a")
        -- step
        m:fault{ path = "/tickle", kind = "hold" } -- its answer only when released: never
        local s = core.new{ base_url = m.url }
        local req = assert(s:start("POST", "/tickle"))
        req:step()
        assert.is_true(m:await_held(1)) -- the mock has it: it is in flight
        s:close()
        assert.is_true(req:step())
        local r, err = req:result()
        assert.is_nil(r)
        assert.are.equal("closed", err.kind)
        assert.are.equal("closed", select(2, s:perform("POST", "/tickle")).kind)
        assert(core.new{ base_url = m.url }:perform("POST", "/tickle"))   -- the process goes on
        cell(name, t .. ":step", "ok closed")
        -- ibkr, cooperative call inside a coroutine
        m:release() -- (to a connection closed: it goes nowhere)
        m:clear_faults()
        m:fault{ path = "/tickle", kind = "hold" }
        u = ibkr.new{ base_url = m.url, cooperative = true, retries = 0, pacing = false }
        local co = coroutine.create(function() return u:tickle() end)
        assert(coroutine.resume(co))
        assert.are.equal("suspended", coroutine.status(co))
        assert.is_true(u:stats().in_flight > 0)
        assert.is_true(m:await_held(1))
        u:close()
        local ok, r2, err2 = coroutine.resume(co)
        assert.is_true(ok)
        assert.is_nil(r2)
        assert.are.equal("closed", err2.kind)
        assert.are.equal("closed", select(2, u:tickle()).kind)
        cell(name, t .. ":ibkr", "ok closed")
        -- keep-alive: it ends (as documented) and frees its request
        m:release()
        m:clear_faults()
        m:fault{ path = "/tickle", kind = "hold" }
        u = ibkr.new{ base_url = m.url, retries = 0, pacing = false }
        local ka = u:keepalive{ interval = 0.01 }
        assert(coroutine.resume(ka))
        assert.is_true(u:stats().in_flight > 0)
        assert.is_true(m:await_held(1))
        u:close()
        assert(coroutine.resume(ka))
        assert.are.equal("dead", coroutine.status(ka))
        local u2 = ibkr.new{ base_url = m.url, retries = 0, pacing = false }
        m:clear_faults()
        assert(u2:tickle())
        u2:close()
        cell(name, t .. ":keepalive", "ok ended")
      end)

      it("the session garbage-collected with a request in flight", function()
        local name = "session GC'd with a request in flight"
        cell(name, t .. ":perform", "n/a")
        m:fault{ path = "/tickle", kind = "hold", count = 3 }
        do
          local s = core.new{ base_url = m.url }
          local req = s:start("POST", "/tickle")
          req:step()
        end
        collectgarbage()
        collectgarbage()
        cell(name, t .. ":step", "ok")
        do
          local u = ibkr.new{ base_url = m.url, cooperative = true, retries = 0, pacing = false }
          local co = coroutine.create(function() return u:tickle() end)
          assert(coroutine.resume(co))
          assert.is_true(u:stats().in_flight > 0)
        end
        collectgarbage()
        collectgarbage()
        cell(name, t .. ":ibkr", "ok")
        do
          local u = ibkr.new{ base_url = m.url, retries = 0, pacing = false }
          local ka = u:keepalive{ interval = 0.01 }
          assert(coroutine.resume(ka))
          assert.is_true(u:stats().in_flight > 0)
        end
        collectgarbage()
        collectgarbage()
        cell(name, t .. ":keepalive", "ok")
        m:clear_faults()
        local s = core.new{ base_url = m.url }
        assert(s:perform("POST", "/tickle"))
        assert(ibkr.new{ base_url = m.url, pacing = false }:tickle())
      end)

      it("coroutine.close of the keep-alive mid-request", function()
        local name = "coroutine.close(keep-alive) mid-request"
        for _, p in ipairs{ "perform", "step", "ibkr" } do cell(name, t .. ":" .. p, "n/a") end
        m:fault{ path = "/tickle", kind = "hold" }
        local u = ibkr.new{ base_url = m.url, retries = 0, pacing = false }
        local ka = u:keepalive{ interval = 0.01 }
        assert(coroutine.resume(ka))
        assert.is_true(u:stats().in_flight > 0)
        assert.is_true(coroutine.close(ka))
        assert.equal(0, u:stats().in_flight)
        m:clear_faults()
        assert(u:tickle())
        local ka2 = u:keepalive{ interval = 0.01, retry_interval = 0.01 }
        drive(ka2, u, 2)
        assert.are.equal("suspended", coroutine.status(ka2))
        coroutine.close(ka2)
        u:close()
        cell(name, t .. ":keepalive", "ok")
      end)
    end)
  end
end)
