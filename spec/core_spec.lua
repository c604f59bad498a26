-- ibkr.core against the mock gateway process, over HTTP and HTTPS: what the gateway sees of each
-- exchange, the decoding rules, every error kind the core produces, connection reuse, and the
-- non-blocking request.
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")

local function find_log(m, path)
  local found
  for _, e in ipairs(m:log()) do
    if e.path == path then found = e end
  end
  return found
end

describe("ibkr.core module", function()
  it("exports its version, equal to the rockspec's", function()
    local f = assert(io.open("rockspec/ibkr-web-api-" .. core._VERSION .. "-1.rockspec"))
    local text = f:read("a")
    f:close()
    assert.are.equal(core._VERSION .. "-1", text:match('\nversion = "([^"]+)"'))
    assert.truthy(core._VERSION:match("^%d+%.%d+%.%d+$"))
  end)

  it("has a monotonic clock and a sleep", function()
    local a = core.monotonic()
    core.sleep(0.01)
    local b = core.monotonic()
    assert.is_true(b - a >= 0.01)
    assert.are.equal("float", math.type(a))
  end)

  it("raises for programmer errors in core.new", function()
    assert.has_error(function() core.new{} end, "option 'base_url' is required")
    assert.has_error(function() core.new{ base_url = "file:///etc/passwd" } end)
    assert.has_error(function() core.new{ base_url = "gopher://example.com/" } end)
    assert.has_error(function() core.new{ base_url = "http:///nohost" } end)
    assert.has_error(function() core.new{ base_url = "http://" } end)
    assert.has_error(function() core.new{ base_url = "http://h/a b" } end)
    assert.has_error(function() core.new{ base_url = "http://h/v1?x=1" } end)
    assert.has_error(function() core.new{ base_url = "http://h", timeout = 0 } end)
    assert.has_error(function() core.new{ base_url = "http://h", timeout = "10" } end)
    assert.has_error(function() core.new{ base_url = "http://h", connect_timeout = -1 } end)
    assert.has_error(function() core.new{ base_url = "http://h", verify = "yes" } end)
    assert.has_error(function() core.new{ base_url = "http://h", max_body = 0 } end)
    assert.has_error(function() core.new{ base_url = "http://h", max_body = 1.5 } end)
    assert.has_error(function() core.new{ base_url = "http://h", headers = { X = "a\r\nB: c" } } end)
    assert.has_error(function() core.new{ base_url = "http://h", headers = { X = "a\0b" } } end)
    assert.has_error(function() core.new{ base_url = "http://h", headers = { ["X\nY"] = "v" } } end)
    assert.has_error(function() core.new{ base_url = "http://h", headers = { ["X:Y"] = "v" } } end)
  end)

  it("makes error objects that print on one line", function()
    local e = core.error{ kind = "busy", message = "m", method = "GET", path = "/p" }
    assert.is_true(core.is_error(e))
    assert.is_false(core.is_error({ kind = "busy" }))
    assert.are.equal("ibkr: busy: GET /p: m", tostring(e))
    assert.has_error(function() core.error{ message = "no kind" } end)
  end)

  it("decodes with integers, dropped object nulls and array nulls kept", function()
    local v = assert(core.decode('{"a":1,"b":1.5,"c":null,"d":[1,null,3],"e":{"f":1702580846836},'
      .. '"g":9007199254740993,"h":-0.0,"i":1e300}'))
    assert.are.equal("integer", math.type(v.a))
    assert.are.equal("float", math.type(v.b))
    assert.is_nil(v.c)
    assert.are.equal(3, #v.d)
    assert.are.equal(core.null, v.d[2])
    assert.are.equal(1702580846836, v.e.f)
    assert.are.equal("integer", math.type(v.e.f))
    assert.are.equal("float", math.type(v.g))     -- beyond 2^53: not exact, stays a float
    assert.are.equal("float", math.type(v.i))
    local _, err = core.decode("{bad")
    assert.are.equal("json", err.kind)
    local _, deep = core.decode(string.rep("[", 300) .. string.rep("]", 300))
    assert.are.equal("json", deep.kind)
  end)

end)

for _, tls in ipairs{ false, true } do
  local scheme = tls and "HTTPS" or "HTTP"

  describe("ibkr.core session over " .. scheme, function()
    local m, s

    setup(function()
      m = mock.start{ tls = tls, pacing = false }
    end)
    teardown(function()
      if s then s:close() end
      if m then m:stop() end
    end)
    before_each(function()
      m:reset()
      m:config{ pacing = false }
      if s then s:close() end
      s = core.new{ base_url = m.url, timeout = 5 }
    end)

    it("turns verification off by itself for a loopback host", function()
      local r, err, status = s:perform("POST", "/iserver/auth/status")
      assert.is_nil(err)
      assert.are.equal(200, status)
      assert.is_true(r.authenticated)
    end)

    it("sends a body-less POST with Content-Length: 0 and no Content-Type", function()
      assert(s:perform("POST", "/tickle"))
      local e = find_log(m, "/v1/api/tickle")
      assert.are.equal("POST", e.method)
      assert.are.equal("0", e.headers["content-length"])
      assert.is_nil(e.headers["content-type"])
      assert.are.equal("", e.body)
      assert.are.equal("application/json", e.headers["accept"])
      assert.are.equal("lua-ibkr/" .. core._VERSION, e.headers["user-agent"])
      assert.is_nil(e.headers["expect"])
    end)

    it("sends a JSON body with Content-Type: application/json", function()
      local r = assert(s:perform("POST", "/iserver/auth/ssodh/init",
        { body = { publish = true, compete = false } }))
      assert.is_true(r.connected)
      local e = find_log(m, "/v1/api/iserver/auth/ssodh/init")
      assert.are.equal("application/json", e.headers["content-type"])
      local body = require("cjson").decode(e.body)
      assert.are.same({ publish = true, compete = false }, body)
      assert.are.equal(tostring(#e.body), e.headers["content-length"])
    end)

    it("sends a string body as is, and a large one without Expect: 100-continue", function()
      local big = '{"pad":"' .. string.rep("x", 5000) .. '"}'
      local none, nf = s:perform("POST", "/__echo_not_found_is_fine", { body = big })
      assert.is_nil(none)
      assert.are.equal(404, nf.status)
      local e = find_log(m, "/v1/api/__echo_not_found_is_fine")
      assert.are.equal(big, e.body)
      assert.is_nil(e.headers["expect"])
    end)

    it("uses GET for sso/validate and decodes epoch-ms integers and nulls", function()
      local r, err = s:perform("GET", "/sso/validate")
      assert.is_nil(err)
      local e = find_log(m, "/v1/api/sso/validate")
      assert.are.equal("GET", e.method)
      assert.is_nil(e.headers["content-length"])
      assert.are.equal("integer", math.type(r.USER_ID))
      assert.are.equal("integer", math.type(r.AUTH_TIME))
      assert.is_true(r.AUTH_TIME > 2 ^ 31)
      assert.is_nil(r.QUALIFIED_FOR_MOBILE_AUTH)
      assert.is_table(r.features)
    end)

    it("decodes the nested tickle body", function()
      local r = assert(s:perform("POST", "/tickle"))
      assert.are.equal("integer", math.type(r.ssoExpires))
      assert.are.equal("integer", math.type(r.userId))
      assert.is_true(r.iserver.authStatus.authenticated)
      assert.are.equal("string", type(r.session))
      assert.is_false(r.collission)
    end)

    it("URL-encodes query tables with sorted keys and repeated array values", function()
      s:perform("GET", "/iserver/accounts", { query = { b = "x y&z", a = { 1, 2 }, c = true } })
      local e = find_log(m, "/v1/api/iserver/accounts")
      assert.are.equal("a=1&a=2&b=x%20y%26z&c=true", e.query)
      assert.has_error(function() s:perform("GET", "/x", { query = { [1] = "v" } }) end)
      assert.has_error(function() s:perform("GET", "/x", { query = { a = {} , b = function() end } }) end)
    end)

    it("lets session and per-call headers win over the built-in ones", function()
      local s2 = core.new{ base_url = m.url, headers = { Accept = "text/plain", ["X-Session"] = "1" },
                           user_agent = "ua-test/1" }
      s2:perform("POST", "/tickle", { headers = { ["X-Call"] = "2", ["X-Session"] = "override" } })
      s2:close()
      local e = find_log(m, "/v1/api/tickle")
      assert.are.equal("text/plain", e.headers["accept"])
      assert.are.equal("override", e.headers["x-session"])
      assert.are.equal("2", e.headers["x-call"])
      assert.are.equal("ua-test/1", e.headers["user-agent"])
    end)

    it("raises for a bad method, path or per-call header", function()
      assert.has_error(function() s:perform("get", "/tickle") end)
      assert.has_error(function() s:perform("POST", "tickle") end)
      assert.has_error(function() s:perform("POST", "/tick\r\nle") end)
      assert.has_error(function() s:perform("POST", "/tick le") end)
      assert.has_error(function() s:perform("POST", "/tickle\0") end)
      assert.has_error(function() s:perform("POST", "/tickle", { headers = { X = "a\nb" } }) end)
      assert.has_error(function() s:perform("POST", "/tickle", { body = 42 }) end)
      -- nothing was sent, and the session still works
      assert.are.equal(0, #m:log())
      assert(s:perform("POST", "/tickle"))
    end)

    it("reuses one connection for many calls", function()
      for _ = 1, 20 do assert(s:perform("POST", "/iserver/auth/status", { repeatable = true })) end
      local conns = {}
      for _, e in ipairs(m:log()) do conns[e.conn] = true end
      local n = 0
      for _ in pairs(conns) do n = n + 1 end
      assert.are.equal(1, n)
      assert.are.equal(1, s:info().connects)
      assert.are.equal(20, s:info().exchanges)
    end)

    it("returns an empty table for an empty 2xx body", function()
      m:fault{ path = "/tickle", kind = "empty" }
      local r, err = s:perform("POST", "/tickle")
      assert.is_nil(err)
      assert.are.same({}, r)
    end)

    for _, st in ipairs{ 401, 429, 500, 503 } do
      it("reports HTTP " .. st .. " as kind http with status, body, data and retry_after", function()
        m:fault{ path = "/tickle", kind = "status", status = st, body = '{"error":"e' .. st .. '"}',
                 headers = { ["Retry-After"] = "7" } }
        local r, err = s:perform("POST", "/tickle")
        assert.is_nil(r)
        assert.are.equal("http", err.kind)
        assert.are.equal(st, err.status)
        assert.are.equal("e" .. st, err.data.error)
        assert.are.equal('{"error":"e' .. st .. '"}', err.body)
        assert.are.equal(7, err.retry_after)
        assert.are.equal("POST", err.method)
        assert.are.equal("/tickle", err.path)
        assert.truthy(tostring(err):find("HTTP " .. st, 1, true))
        assert(s:perform("POST", "/tickle"))   -- usable afterwards
      end)
    end

    it("reports a non-JSON 2xx body (HTML) as kind json, with the body", function()
      m:fault{ path = "/tickle", kind = "html" }
      local r, err = s:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.are.equal("json", err.kind)
      assert.are.equal(200, err.status)
      assert.truthy(err.body:find("<", 1, true))
    end)

    it("reports truncated and malformed JSON as kind json", function()
      m:fault{ path = "/tickle", kind = "truncated" }
      local _, err = s:perform("POST", "/tickle")
      assert.are.equal("json", err.kind)
      m:fault{ path = "/tickle", kind = "malformed" }
      _, err = s:perform("POST", "/tickle")
      assert.are.equal("json", err.kind)
    end)

    it("cuts the body of an error object to 4096 bytes", function()
      m:fault{ path = "/tickle", kind = "status", status = 500, body = string.rep("e", 10000) }
      local _, err = s:perform("POST", "/tickle")
      assert.are.equal(4096, #err.body)
      assert.is_nil(err.data)
    end)

    it("refuses a body over max_body with kind too_large", function()
      local s2 = core.new{ base_url = m.url, max_body = 1000 }
      m:fault{ path = "/tickle", kind = "huge", bytes = 100000 }
      local r, err = s2:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.are.equal("too_large", err.kind)
      assert(s2:perform("POST", "/iserver/auth/status"))
      s2:close()
    end)

    it("does not follow redirects, not even to file://", function()
      m:fault{ path = "/tickle", kind = "redirect", location = "file:///etc/passwd" }
      local r, err = s:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.are.equal("http", err.kind)
      assert.are.equal(302, err.status)
      assert.are.equal("file:///etc/passwd", err.location)
      assert.are.equal(1, #m:log())
    end)

    it("times out with kind timeout, then works again", function()
      local s2 = core.new{ base_url = m.url, timeout = 0.3 }
      m:fault{ path = "/tickle", kind = "hold", seconds = 30 } -- answered only after 30 s
      local r, err = s2:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.are.equal("timeout", err.kind)
      assert(s2:perform("POST", "/iserver/auth/status"))
      s2:close()
    end)

    it("reports a connection dropped mid-response as kind protocol", function()
      m:fault{ path = "/tickle", kind = "drop", when = "mid" }
      local r, err = s:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.are.equal("protocol", err.kind)
      assert.is_number(err.curl_code)
      assert(s:perform("POST", "/tickle"))
    end)

    it("returns kind closed after close(), which is idempotent", function()
      s:close()
      s:close()
      assert.is_true(s:closed())
      local r, err = s:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.are.equal("closed", err.kind)
      local r2, err2 = s:start("POST", "/tickle")
      assert.is_nil(r2)
      assert.are.equal("closed", err2.kind)
      assert.truthy(tostring(s):find("closed"))
    end)

    it("works as a to-be-closed variable", function()
      local keep
      do
        local s2 <close> = core.new{ base_url = m.url }
        keep = s2
        assert(s2:perform("POST", "/tickle"))
      end
      assert.is_true(keep:closed())
    end)

    describe("non-blocking request", function()
      it("gives the same result as the blocking call, and a step never waits for the answer", function()
        m:fault{ path = "/tickle", kind = "hold", seconds = 30 }
        local req = assert(s:start("POST", "/tickle"))
        -- until the mock has the request and holds its answer, then 20 more steps: none waits
        -- for the answer (it comes only once released), each asks to be called again soon
        local steps, held = 0, 0
        while held < 20 do
          local done, wait = req:step()
          assert.is_false(done, "a step waited for the held answer")
          assert.is_true(wait >= 0 and wait <= 0.01)
          steps = steps + 1
          if #m:held() == 1 then held = held + 1 end
          core.sleep(wait)
        end
        m:release()
        while not req:step() do core.sleep(0.001) end
        -- (the time a step takes is a figure of make bench: bench/stall.lua)
        local r, err, status = req:result()
        assert.is_nil(err)
        assert.are.equal(200, status)
        assert.are.equal("integer", math.type(r.ssoExpires))
        -- result() can be asked again
        assert.are.equal(r, (req:result()))
      end)

      it("reports errors exactly like the blocking call", function()
        m:fault{ path = "/tickle", kind = "status", status = 503, body = '{"error":"busy"}',
                 headers = { ["Retry-After"] = "3" } }
        local req = assert(s:start("POST", "/tickle"))
        assert.is_true(req:wait(5))
        local r, err = req:result()
        assert.is_nil(r)
        assert.are.equal("http", err.kind)
        assert.are.equal(503, err.status)
        assert.are.equal(3, err.retry_after)
      end)

      it("runs requests of one session side by side, blocking ones included", function()
        m:fault{ path = "/tickle", kind = "hold" }
        local slow = assert(s:start("POST", "/tickle"))
        local quick = assert(s:start("POST", "/iserver/auth/status"))
        assert.is_true(s:busy())
        assert.is_true(m:await_held(1))
        local res = assert(s:perform("POST", "/iserver/auth/status"))
        assert.is_true(res.authenticated)
        assert.is_true(quick:wait(5))
        assert.is_true(assert(quick:result()).authenticated)
        assert.are.equal(1, #m:held(), "the quick calls waited for the slow one")
        local _, early = slow:result()
        assert.are.equal("busy", early.kind)
        m:release()
        assert.is_true(slow:wait(5))
        assert(slow:result())
        assert.is_false(s:busy())
      end)

      it("is a pollable: its descriptor becomes readable when the answer is there", function()
        m:fault{ path = "/tickle", kind = "hold" }
        local req = assert(s:start("POST", "/tickle", { timeout = 4 }))
        local fd = req:pollfd()
        assert.is_true(math.type(fd) == "integer" and fd >= 0)
        assert.are.equal("r", req:events())
        local t = req:timeout()
        assert.is_true(t > 3 and t <= 4.1, "timeout() is the exchange's own deadline: " .. t)
        assert.are.equal(0, select("#", core.poll({ fd }, 0)))        -- not yet
        local other = assert(s:start("POST", "/iserver/auth/status"))
        assert.are.same({ 2 }, { core.poll({ fd, other:pollfd() }, 5) }) -- the other one first
        assert.is_true(m:await_held(1))
        m:release()
        assert.are.same({ 1 }, { core.poll({ fd }, 5) })
        assert.is_true(req:done())
        assert(req:result())
        assert(other:result())
        assert.are.equal(-1, req:pollfd())                               -- collected: closed
      end)

      it("is freed when the session closes under it", function()
        m:fault{ path = "/tickle", kind = "hold" }
        local req = assert(s:start("POST", "/tickle"))
        req:step()
        s:close()
        assert.is_true(req:step())
        local r, err = req:result()
        assert.is_nil(r)
        assert.are.equal("closed", err.kind)
        req:close()
      end)

      it("is freed by the garbage collector mid-flight, with its session", function()
        m:fault{ path = "/tickle", kind = "hold" }
        do
          local s2 = core.new{ base_url = m.url }
          local req = assert(s2:start("POST", "/tickle"))
          req:step()
        end
        collectgarbage()
        collectgarbage()
        assert(s:perform("POST", "/iserver/auth/status"))
      end)
    end)
  end)
end

describe("ibkr.core transport failures", function()
  it("reports a refused connection as kind connect", function()
    local port = require("spec.helpers.raw").spare_port() -- nobody listens there
    local s = core.new{ base_url = "http://127.0.0.1:" .. port .. "/v1/api" }
    local r, err = s:perform("POST", "/tickle")
    assert.is_nil(r)
    assert.are.equal("connect", err.kind)
    assert.are.equal("POST", err.method)
    assert.truthy(tostring(err):find("connect", 1, true))
    s:close()
  end)

  describe("with TLS verification on", function()
    local m
    setup(function() m = mock.start{ tls = true, pacing = false } end)
    teardown(function() if m then m:stop() end end)

    it("refuses the self-signed certificate with kind tls", function()
      -- (the refusal comes at the handshake: a long connect timeout for a slow machine, and ASan)
      local s = core.new{ base_url = m.url, verify = true, connect_timeout = 30 }
      local r, err = s:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.are.equal("tls", err.kind)
      s:close()
    end)

    it("reports a missing ca_file as kind tls", function()
      local s = core.new{ base_url = m.url, ca_file = "/nonexistent/ca.pem", connect_timeout = 30 }
      local _, err = s:perform("POST", "/tickle")
      assert.are.equal("tls", err.kind)
      s:close()
    end)
  end)
end)
