-- Tracing: ibkr.new{ trace = fn } is called once per exchange — counted against the mock
-- gateway's request log — with method, path, status or kind, seconds, bytes, attempt; secrets
-- never appear (headers, credential-like query values, the base URL's userinfo, OAuth tokens),
-- bodies only when asked (trace_body = true, never for token requests); IBKR_TRACE=1 prints the
-- same, one line per exchange on stderr; a trace function that raises, yields or calls its own
-- session is reported and does not break the call. Blocking and cooperative.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")

local function call_in(coop, f)
  if not coop then return f() end
  local co = coroutine.create(f)
  while true do
    local r = table.pack(coroutine.resume(co))
    assert(r[1], r[2])
    if coroutine.status(co) == "dead" then return table.unpack(r, 2, r.n) end
    -- a cooperative call yields seconds, then a pollable while in flight: never anything else
    assert.equal("number", type(r[2]))
    if r.n > 2 then assert.is_function(r[3].pollfd) end
    core.sleep(math.min(r[2], 0.01))
  end
end

-- Every string anywhere in v (keys and values, nested tables), joined.
local function strings_of(v, out, seen)
  out, seen = out or {}, seen or {}
  if type(v) == "string" or type(v) == "number" then
    out[#out + 1] = tostring(v)
  elseif type(v) == "table" and not seen[v] then
    seen[v] = true
    for k, x in pairs(v) do strings_of(k, out, seen); strings_of(x, out, seen) end
  end
  return table.concat(out, "\n")
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

describe("trace", function()
  local m
  setup(function() m = assert(mock.start{ tls = false, pacing = false, init_delay = 0 }) end)
  teardown(function() m:stop() end)
  before_each(function() m:reset() end)

  for _, coop in ipairs{ false, true } do
    local how = coop and "cooperative" or "blocking"

    it(how .. ": one event per exchange, as the gateway's log counts them, retries included", function()
      local events = {}
      local s = m:session{ cooperative = coop, retries = 2, pacing = false,
        trace = function(ev) events[#events + 1] = ev end }
      m:fault{ path = "/tickle", kind = "status", status = 503, count = 1 }
      m:fault{ path = "/iserver/auth/status", kind = "delay", seconds = 30, count = 1 }
      local res, meta = call_in(coop, function() return s:tickle() end)
      assert.is_table(res)
      local res2 = call_in(coop, function() return s:auth_status{ timeout = 0.3 } end)
      assert.is_table(res2)
      call_in(coop, function() return s:request("GET", "/sso/validate", { query = { a = 1 } }) end)
      assert.equal(#m:api_log(), #events)
      assert.equal(2, #m:api_log("/tickle"))
      local e1, e2 = events[1], events[2]
      assert.same({ "POST", "/tickle", 1, 503, "http" },
        { e1.method, e1.path, e1.attempt, e1.status, e1.kind })
      assert.is_number(e1.retry) -- it was tried again, after that many seconds
      assert.same({ "POST", "/tickle", 2, 200 }, { e2.method, e2.path, e2.attempt, e2.status })
      assert.is_nil(e2.kind)
      assert.is_nil(e2.retry)
      assert.equal(tonumber(meta.headers["content-length"]), e2.bytes)
      local e3, e4 = events[3], events[4]
      assert.same({ "/iserver/auth/status", 1, "timeout" }, { e3.path, e3.attempt, e3.kind })
      assert.is_nil(e3.status)
      assert.same({ "/iserver/auth/status", 2, 200 }, { e4.path, e4.attempt, e4.status })
      local e5 = events[5]
      assert.same({ "GET", "/sso/validate", { a = 1 } }, { e5.method, e5.path, e5.query })
      for _, ev in ipairs(events) do
        assert.is_true(ev.seconds >= 0 and ev.seconds < 60)
        assert.equal(m.url, ev.base)
        assert.is_nil(ev.body)
        assert.is_nil(ev.data)
      end
      s:close()
    end)

    it(how .. ": a call refused without sending gives one event with `held`", function()
      local events = {}
      local s = m:session{ cooperative = coop, pacing = true,
        trace = function(ev) events[#events + 1] = ev end }
      assert(call_in(coop, function() return s:tickle() end))
      local res, err = call_in(coop, function() return s:tickle{ deadline = 0.2 } end)
      assert.is_nil(res)
      assert.equal("rate_limited", err.kind)
      assert.equal(1, #m:api_log("/tickle"))
      assert.equal(2, #events)
      assert.same({ "rate_limited", "limits", 0, 0 }, { events[2].kind, events[2].held, events[2].bytes,
        events[2].seconds })
      assert.is_number(events[2].retry_after)
      s:close()
    end)

    it(how .. ": a trace function that raises, yields or calls its session is reported; the call goes on",
        function()
      local s
      local what = "raise"
      local saw = {}
      s = m:session{ cooperative = coop, pacing = false, trace = function(ev)
        saw[#saw + 1] = ev.path
        if what == "raise" then error("boom in trace") end
        if what == "yield" then coroutine.yield("from the trace function") end
        if what == "call" then s:auth_status() end
      end }
      for i, w in ipairs{ "raise", "yield", "call" } do
        what = w
        local res, meta = call_in(coop, function() return s:tickle() end)
        assert.is_table(res, w)
        assert.equal(200, meta.status, w)
        assert.equal(i, s:stats().trace_errors, w)
      end
      local st = s:stats()
      assert.matches("must not call its session", st.trace_error)
      assert.equal(3, #m:api_log("/tickle"))
      assert.equal(0, #m:api_log("/iserver/auth/status")) -- the call from the trace was refused
      assert.same({ "/tickle", "/tickle", "/tickle" }, saw)
      what = nil
      assert(call_in(coop, function() return s:tickle() end))
      assert.equal(3, s:stats().trace_errors) -- a good one again: nothing more to report
      s:close()
    end)
  end

  it("a trace function may use another session, and close its own (the call then ends closed)", function()
    local other = m:session{}
    local s
    s = m:session{ retries = 2, pacing = false, trace = function(ev)
      assert(other:auth_status())
      if ev.status == 503 then s:close() end
    end }
    m:fault{ path = "/tickle", kind = "status", status = 503, count = 1 }
    local res, err = s:tickle()
    assert.is_nil(res)
    assert.equal("closed", err.kind)
    assert.equal(1, #m:api_log("/tickle"))
    assert.equal(0, s:stats().trace_errors)
    other:close()
  end)

  it("never shows secrets: headers, credential-like query values, the URL's userinfo", function()
    local events = {}
    local url = m.url:gsub("^http://", "http://alice:PW-SECRET@")
    local s = ibkr.new{ base_url = url, pacing = false, headers = { Authorization = "Bearer H-SECRET",
      Cookie = "c=C-SECRET" }, trace = function(ev) events[#events + 1] = ev end }
    assert(s:request("GET", "/sso/validate?signature=Q-SECRET&x=1", {
      query = { access_token = "T-SECRET", conid = 265598, oauth_nonce = "N-SECRET", list = { 1, 2 } },
      headers = { ["X-Api-Key"] = "K-SECRET" } }))
    assert(s:request("POST", "/tickle", { body = { password = "B-SECRET" } }))
    local text = strings_of(events)
    assert.is_nil(text:find("SECRET", 1, true), text)
    local q = events[1].query
    assert.equal(265598, q.conid)
    assert.equal("1", q.x)
    assert.same({ 1, 2 }, q.list)
    assert.equal("<redacted>", q.signature)
    assert.equal("<redacted>", q.access_token)
    assert.equal("<redacted>", q.oauth_nonce)
    assert.equal("/sso/validate", events[1].path)
    assert.equal(m.url, events[1].base)
    s:close()
  end)

  it("bodies only when asked (trace_body = true): the answer, the body sent", function()
    local events = {}
    local s = m:session{ trace_body = true, retries = 0, pacing = false,
      trace = function(ev) events[#events + 1] = ev end }
    m:fault{ path = "/iserver/auth/status", kind = "status", status = 500, body = { error = "down" } }
    local res = assert(s:request("POST", "/tickle", { body = { n = 1 } }))
    assert.is_nil(s:auth_status())
    assert.equal(res, events[1].data)
    assert.same({ n = 1 }, events[1].request_body)
    assert.equal('{"error":"down"}', events[2].body)
    assert.same({ error = "down" }, events[2].data)
    s:close()
  end)

  it("OAuth: the token request is traced (token = true) without its bodies, even when asked", function()
    local om = assert(mock.start{ tls = false, args = { "--oauth" } })
    local cfg = assert(require("ibkr.oauth").read_config(om:control("GET", "/__mock/oauth").config_file))
    local events = {}
    local s = ibkr.new{ base_url = om.url, oauth = cfg, pacing = false, trace_body = true,
      trace = function(ev) events[#events + 1] = ev end }
    assert(s:tickle())
    assert.equal(2, #events)
    assert.is_true(events[1].token)
    assert.equal("/oauth/live_session_token", events[1].path)
    assert.is_nil(events[1].data)
    assert.is_nil(events[1].request_body)
    assert.equal("/tickle", events[#events].path)
    local text = strings_of(events)
    for _, k in ipairs{ "access_token", "access_token_secret", "consumer_key" } do
      assert.is_nil(text:find(cfg[k], 1, true), k)
    end
    assert.is_nil(text:find("oauth_signature", 1, true))
    s:close()
    om:stop()
  end)

  it("checks its options at ibkr.new", function()
    assert.has_error(function() ibkr.new{ trace = true } end)
    assert.has_error(function() ibkr.new{ trace_body = 1 } end)
    local ok, err = pcall(ibkr.new, { trac = print })
    assert.is_false(ok)
    assert.matches("did you mean 'trace'", err)
  end)

  describe("IBKR_TRACE", function()
    local script
    setup(function()
      script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
        local ibkr = require("ibkr")
        local s = ibkr.new{ base_url = arg[1], pacing = false, retries = 2,
          trace = arg[2] == "raise" and function() error("trace boom") end or nil }
        assert(s:tickle())
        assert(s:request("GET", "/sso/validate", { query = { token = "Z-SECRET", conid = 5 } }))
        io.stdout:write(s:stats().trace_errors, "\n")
        s:close()
      ]])
      f:close()
    end)
    teardown(function() os.remove(script) end)

    local function run(env, extra)
      local err = os.tmpname()
      local out = sh(env .. " lua5.4 " .. script .. " " .. m.url .. " " .. (extra or "") .. " 2>" .. err)
      local f = assert(io.open(err))
      local lines = {}
      for l in f:lines() do lines[#lines + 1] = l end
      f:close()
      os.remove(err)
      return lines, out
    end

    it("=1 prints one line per exchange on stderr, as the log counts them", function()
      m:fault{ path = "/tickle", kind = "status", status = 503, count = 1 }
      local lines = run("IBKR_TRACE=1")
      assert.equal(3, #m:api_log(), table.concat(lines, "\n"))
      assert.equal(3, #lines, table.concat(lines, "\n"))
      assert.matches("^ibkr trace: POST /tickle status=503 kind=http seconds=[%d.]+ bytes=%d+ "
        .. "attempt=1 retry=", lines[1])
      assert.matches("^ibkr trace: POST /tickle status=200 seconds=[%d.]+ bytes=%d+ attempt=2 base=http://",
        lines[2])
      assert.matches("^ibkr trace: GET /sso/validate%?conid=5&token=<redacted> status=200 ", lines[3])
      assert.is_nil(table.concat(lines, "\n"):find("SECRET", 1, true))
    end)

    it("unset, empty or 0 prints nothing", function()
      for _, env in ipairs{ "env -u IBKR_TRACE", "IBKR_TRACE=", "IBKR_TRACE=0" } do
        local lines = run(env)
        assert.same({}, lines, env)
      end
    end)

    it("a raising trace function is reported once on stderr, every failure counted", function()
      local lines, out = run("env -u IBKR_TRACE", "raise")
      assert.equal("2\n", out)
      assert.equal(1, #lines, table.concat(lines, "\n"))
      assert.matches("^ibkr: the session's trace function raised: .*trace boom", lines[1])
    end)
  end)
end)
