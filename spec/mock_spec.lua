-- The mock gateway's API endpoints and state machine, over HTTP and HTTPS, driven with a plain
-- luasocket/luasec client.
local socket = require("socket")
local mock = require("spec.helpers.mock")

local decode = mock.json

-- Polls fn() until it returns a truthy value or timeout seconds pass (bounded, no fixed sleep).
local function eventually(fn, timeout)
  local deadline = socket.gettime() + (timeout or 10)
  repeat
    local v = fn()
    if v then
      return v
    end
    socket.sleep(0.01)
  until socket.gettime() > deadline
  return nil
end

for _, tls in ipairs({ false, true }) do
  local scheme = tls and "https" or "http"

  describe("mock gateway over " .. scheme, function()
    local m, c

    setup(function()
      -- (before_each's connection may wait long for its first request on a loaded machine)
      m = assert(mock.start({ tls = tls, pacing = false, head_timeout = 60 }))
    end)

    teardown(function()
      if m then
        m:stop()
      end
    end)

    before_each(function()
      m:reset()
      m:config({ pacing = false, init_delay = 0, reauth_delay = 0 })
      c = assert(m:connect())
    end)

    after_each(function()
      c:close()
    end)

    local function api(method, path, opts)
      local r, err = c:request(method, "/v1/api" .. path, opts)
      assert(r, err)
      return r
    end

    it("prints its base URL with the right scheme on an ephemeral port", function()
      assert.matches("^" .. scheme .. "://127%.0%.0%.1:%d+/v1/api$", m.url)
      assert.is_true(m.port > 0)
      assert.equals(m.pid, m:state().pid)
    end)

    it("answers POST /iserver/auth/status with an authenticated status when ready", function()
      local r = api("POST", "/iserver/auth/status")
      assert.equals(200, r.status)
      assert.equals("application/json", r.headers["content-type"])
      assert.equals(#r.body, tonumber(r.headers["content-length"]))
      local b = decode(r)
      assert.is_true(b.authenticated)
      assert.is_true(b.connected)
      assert.is_false(b.competing)
      assert.is_true(b.established)
      assert.equals("", b.message)
      assert.equals("", b.fail)
      assert.matches("^%x%x:%x%x:%x%x:%x%x:%x%x:%x%x$", b.MAC)
      assert.equals("1c4558e8|" .. b.MAC, b.hardware_info)
      assert.is_string(b.serverInfo.serverName)
      assert.is_string(b.serverInfo.serverVersion)
    end)

    it("also answers GET /iserver/auth/status, like the gateway", function()
      local r = api("GET", "/iserver/auth/status")
      assert.equals(200, r.status)
      assert.is_true(decode(r).authenticated)
    end)

    it("answers POST /tickle with the gateway's tickle body", function()
      local r = api("POST", "/tickle")
      assert.equals(200, r.status)
      local b = decode(r)
      assert.matches("^%x+$", b.session)
      assert.equals(32, #b.session)
      assert.is_false(b.collission)
      assert.same({ error = "no bridge" }, b.hmds)
      assert.is_true(b.iserver.authStatus.authenticated)
      assert.is_true(b.ssoExpires > 0 and b.ssoExpires <= 600000)
      -- integers, written without a fraction or exponent
      assert.matches('"ssoExpires":%d+[,}]', r.body)
      assert.matches('"userId":%d+[,}]', r.body)
      assert.equals(b.session, m:state().session)
    end)

    it("answers GET /sso/validate with epoch-millisecond integers and a null", function()
      local r = api("GET", "/sso/validate")
      assert.equals(200, r.status)
      local b = decode(r)
      assert.is_true(b.RESULT)
      assert.equals(2, b.LOGIN_TYPE)
      assert.matches('"USER_ID":%d+[,}]', r.body)
      assert.matches('"AUTH_TIME":%d%d%d%d%d%d%d%d%d%d%d%d%d[,}]', r.body)
      assert.matches('"lastAccessed":%d+[,}]', r.body)
      assert.matches('"QUALIFIED_FOR_MOBILE_AUTH":null', r.body, 1, true)
      assert.equals("PROD", b.features.env)
      local now_ms = socket.gettime() * 1000
      assert.is_true(math.abs(b.AUTH_TIME - now_ms) < 60000)
      assert.is_true(b.lastAccessed >= b.AUTH_TIME)
      assert.is_true(b.EXPIRES > 0 and b.EXPIRES <= 600000)
    end)

    it("answers 405 with Allow for a wrong method on a known endpoint", function()
      local r = api("POST", "/sso/validate")
      assert.equals(405, r.status)
      assert.equals("GET", r.headers.allow)
      assert.is_string(decode(r).error)
      r = api("GET", "/logout")
      assert.equals(405, r.status)
      assert.equals("POST", r.headers.allow)
      r = api("DELETE", "/tickle")
      assert.equals(405, r.status)
      assert.equals("POST, GET", r.headers.allow)
    end)

    it("answers 404 with a JSON error for unknown paths, inside and outside the API", function()
      local r = api("GET", "/no/such/endpoint")
      assert.equals(404, r.status)
      assert.matches("/v1/api/no/such/endpoint", decode(r).error, 1, true)
      r = assert(c:request("GET", "/elsewhere"))
      assert.equals(404, r.status)
      assert.is_string(decode(r).error)
      r = assert(c:request("GET", "/__mock/nothing"))
      assert.equals(404, r.status)
    end)

    it("serves HEAD on GET endpoints without a body", function()
      local r = api("HEAD", "/sso/validate")
      assert.equals(200, r.status)
      assert.equals("", r.body)
      assert.is_true(tonumber(r.headers["content-length"]) > 0)
      -- the connection is still in sync
      assert.equals(200, api("POST", "/tickle").status)
    end)

    it("answers /iserver/accounts when ready and 400 'Init session first' when not", function()
      local b = decode(api("GET", "/iserver/accounts"))
      assert.equals("DU1234567", b.accounts[1])
      assert.equals("DU1234567", b.selectedAccount)
      assert.matches('"groups":[]', api("GET", "/iserver/accounts").body, 1, true)
      m:set_state("unauthenticated")
      local r = api("GET", "/iserver/accounts")
      assert.equals(400, r.status)
      assert.same({ error = "Init session first", statusCode = 400 }, decode(r))
    end)

    it("answers /portfolio/accounts with a JSON array", function()
      local r = api("GET", "/portfolio/accounts")
      assert.equals(200, r.status)
      assert.matches("^%[", r.body)
      assert.equals("DU1234567", decode(r)[1].id)
    end)

    it("also serves the session endpoints under /v1/portal", function()
      local r = assert(c:request("POST", "/v1/portal/tickle"))
      assert.equals(200, r.status)
      assert.is_string(decode(r).session)
    end)

    it("echoes API requests at /v1/api/__mock/echo and control requests at /__mock/echo", function()
      local r = api("PUT", "/__mock/echo?x=1", { body = "hello", headers = { ["X-Test"] = "yes" } })
      local b = decode(r)
      assert.equals("PUT", b.method)
      assert.equals("/v1/api/__mock/echo", b.path)
      assert.equals("x=1", b.query)
      assert.equals("hello", b.body)
      assert.equals("yes", b.headers["x-test"])
      assert.equals(tls, b.tls)
      b = decode(assert(c:request("POST", "/__mock/echo", { body = "{}" })))
      assert.equals("/__mock/echo", b.path)
      assert.equals(0, #m:log() - 1) -- only the API echo was logged
    end)

    describe("state machine", function()
      it("reports unauthenticated: connected, not authenticated, no serverInfo", function()
        m:set_state("unauthenticated")
        local b = decode(api("POST", "/iserver/auth/status"))
        assert.is_false(b.authenticated)
        assert.is_true(b.connected)
        assert.is_false(b.competing)
        assert.is_nil(b.serverInfo)
        assert.is_false(decode(api("POST", "/tickle")).iserver.authStatus.authenticated)
      end)

      it("reports disconnected with the logged-out body", function()
        m:set_state("disconnected")
        local b = decode(api("POST", "/iserver/auth/status"))
        assert.is_false(b.connected)
        assert.is_false(b.authenticated)
        assert.is_nil(b.serverInfo)
        assert.is_nil(b.message)
        assert.is_string(b.MAC)
      end)

      it("reports competing: authenticated and competing", function()
        m:set_state("competing")
        local b = decode(api("POST", "/iserver/auth/status"))
        assert.is_true(b.authenticated)
        assert.is_true(b.competing)
        assert.is_table(b.serverInfo)
      end)

      it("answers 401 'no session' on every session endpoint in no_session", function()
        m:set_state("no_session")
        for _, e in ipairs({ { "POST", "/iserver/auth/status" }, { "POST", "/tickle" },
          { "GET", "/sso/validate" }, { "POST", "/logout" }, { "POST", "/iserver/reauthenticate" },
          { "POST", "/iserver/auth/ssodh/init" }, { "GET", "/iserver/accounts" } }) do
          local r = api(e[1], e[2], e[2]:find("ssodh") and { body = '{"publish":true}' } or nil)
          assert.equals(401, r.status, e[2])
          assert.same({ error = "no session" }, decode(r))
        end
      end)

      it("ssodh/init requires publish:true, else 500 with a JSON error", function()
        m:set_state("unauthenticated")
        local r = api("POST", "/iserver/auth/ssodh/init",
          { body = '{"publish":false,"compete":true}', headers = { ["Content-Type"] = "application/json" } })
        assert.equals(500, r.status)
        assert.is_string(decode(r).error)
        r = api("POST", "/iserver/auth/ssodh/init")
        assert.equals(500, r.status)
        r = api("POST", "/iserver/auth/ssodh/init", { body = "not json" })
        assert.equals(500, r.status)
        assert.equals("unauthenticated", m:state().state)
      end)

      it("unauthenticated -> ssodh/init -> ready (immediately with init_delay 0)", function()
        m:set_state("unauthenticated")
        local r = api("POST", "/iserver/auth/ssodh/init", { body = '{"publish":true,"compete":false}' })
        assert.equals(200, r.status)
        assert.is_true(decode(r).authenticated)
        assert.equals("ready", m:state().state)
      end)

      it("accepts publish/compete in the query string too", function()
        m:set_state("unauthenticated")
        local r = api("POST", "/iserver/auth/ssodh/init?publish=true&compete=true")
        assert.equals(200, r.status)
        assert.equals("ready", m:state().state)
      end)

      it("ssodh/init becomes ready only after init_delay, on the server's clock", function()
        m:config({ init_delay = 1 })
        m:set_state("unauthenticated")
        local t0 = socket.gettime()
        local b = decode(api("POST", "/iserver/auth/ssodh/init", { body = '{"publish":true}' }))
        assert.is_false(b.authenticated)
        local st = m:state()
        assert.equals("unauthenticated", st.state)
        assert.equals("ready", st.pending.state)
        assert.is_true(st.pending["in"] > 0 and st.pending["in"] <= 1)
        assert.truthy(eventually(function()
          return decode(api("POST", "/iserver/auth/status")).authenticated
        end))
        assert.is_true(socket.gettime() - t0 >= 1)
      end)

      it("competing stays competing on ssodh/init without compete, ready with compete:true", function()
        m:set_state("competing")
        local b = decode(api("POST", "/iserver/auth/ssodh/init",
          { body = '{"publish":true,"compete":false}' }))
        assert.is_true(b.competing)
        assert.equals("competing", m:state().state)
        api("POST", "/iserver/auth/ssodh/init", { body = '{"publish":true,"compete":true}' })
        assert.equals("ready", m:state().state)
      end)

      it("disconnected -> ssodh/init -> ready", function()
        m:set_state("disconnected")
        api("POST", "/iserver/auth/ssodh/init", { body = '{"publish":true,"compete":false}' })
        assert.equals("ready", m:state().state)
      end)

      it("reauthenticate answers 'triggered' and becomes ready after reauth_delay", function()
        m:config({ reauth_delay = 0.2 })
        m:set_state("unauthenticated")
        local r = api("POST", "/iserver/reauthenticate")
        assert.equals(200, r.status)
        assert.same({ message = "triggered" }, decode(r))
        assert.equals("unauthenticated", m:state().state)
        assert.truthy(eventually(function()
          return m:state().state == "ready"
        end))
      end)

      it("reauthenticate also resolves competing", function()
        m:set_state("competing")
        api("POST", "/iserver/reauthenticate")
        assert.equals("ready", m:state().state)
      end)

      it("logout answers {status:true} and leaves no session until /__mock/login", function()
        local r = api("POST", "/logout")
        assert.equals(200, r.status)
        assert.same({ status = true }, decode(r))
        assert.equals("no_session", m:state().state)
        assert.equals(401, api("POST", "/tickle").status)
        assert.equals(401, api("POST", "/iserver/reauthenticate").status)
        assert.equals("no_session", m:state().state)
        local before = m:state().session
        local st = m:login()
        assert.equals("ready", st.state)
        assert.are_not.equal(before, st.session)
        assert.equals(200, api("POST", "/tickle").status)
        assert.equals("unauthenticated", m:login("unauthenticated").state)
      end)

      it("expires an idle ready session to unauthenticated after idle_timeout", function()
        assert.is_true(decode(api("POST", "/iserver/auth/status")).authenticated)
        m:config({ idle_timeout = 0.2 }) -- (0.2 s after that request at the earliest)
        local st = eventually(function()
          local s = m:state()
          return s.state == "unauthenticated" and s
        end)
        assert.truthy(st)
        assert.equals(1, st.counters.idle_expiries)
        assert.is_false(decode(api("POST", "/tickle")).iserver.authStatus.authenticated)
      end)

      it("keeps the session while API requests keep coming", function()
        m:config({ idle_timeout = 1.5 })
        local t0 = socket.gettime()
        while socket.gettime() - t0 < 2 do
          assert.is_true(decode(api("POST", "/iserver/auth/status")).authenticated)
          socket.sleep(0.05) -- the client's request cadence, well under idle_timeout
        end
        assert.equals(0, m:state().counters.idle_expiries)
      end)

      it("sets the state and config together through POST /__mock/state", function()
        local st = m:set_state({ state = "competing", idle_timeout = 42 })
        assert.equals("competing", st.state)
        assert.equals(42, st.config.idle_timeout)
        local r = assert(m:request("POST", "/__mock/state", { body = '{"state":"bogus"}' }))
        assert.equals(400, r.status)
        assert.equals("competing", m:state().state)
      end)
    end)
  end)
end
