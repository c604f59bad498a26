-- The session calls, errors, retries, pacing and helpers against the mock gateway (a real
-- subprocess). Time-dependent logic runs on an injected fake clock: nothing here sleeps.
local ibkr = require("ibkr")
local pacing = require("ibkr.pacing")
local mock = require("spec.helpers.mock")
local gateway = require("spec.helpers.gateway")


describe("session calls over HTTPS", function()
  local m, s
  setup(function()
    m = assert(mock.start{ tls = true, pacing = false })
  end)
  teardown(function() m:stop() end)
  before_each(function()
    m:reset()
    s = ibkr.new{ base_url = m.url }
  end)
  after_each(function() s:close() end)

  it("returns the documented shapes with integers where JSON has integral numbers", function()
    local st = assert(s:auth_status())
    assert.is_true(st.authenticated)
    local t = assert(s:tickle())
    assert.equal("table", type(t.iserver.authStatus))
    assert.equal("integer", math.type(t.ssoExpires))
    local v = assert(s:sso_validate())
    assert.equal("integer", math.type(v.USER_ID))
    assert.equal("integer", math.type(v.AUTH_TIME))
    assert.is_nil(v.QUALIFIED_FOR_MOBILE_AUTH) -- null in an object: key absent
    assert.same({ message = "triggered" }, assert(s:reauthenticate()))
    assert.same(t.session, assert(s:tickle()).session)
    assert.same({ status = true }, assert(s:logout()))
    assert.equal(1, s:stats().connects) -- one connection for all of them
  end)

  it("tostring(s) never shows the credentials of base_url", function()
    local u = ibkr.new{ base_url = "https://alice:s3cr3t@127.0.0.1:5000/v1/api" }
    assert.equal("ibkr.session (https://127.0.0.1:5000/v1/api)", tostring(u))
    u:close()
    assert.not_matches("s3cr3t", tostring(u))
  end)

  it("request refuses a path that would not be sent as given, at the caller's line", function()
    local u = ibkr.new{ base_url = "http://127.0.0.1:9/v1/api" }
    for path, why in pairs{ ["/../secret"] = "'.' or '..' segment", ["/x#frag"] = "percent-encode it as %23",
                            ["/x\195\169"] = "non-ASCII" } do
      local ok, err = pcall(u.request, u, "GET", path)
      assert.is_false(ok)
      assert.matches(why, err, 1, true)
      assert.not_matches("call.lua", err, 1, true)
    end
    u:close()
  end)

  it("validate is an alias of sso_validate", function()
    assert.equal(s.sso_validate, s.validate)
    assert.is_true(assert(s:validate()).RESULT)
  end)
end)

describe("session calls over HTTP", function()
  local m, s, ft
  gateway.each(function(f) m, s, ft = f.m, f.s, f.ft end, { session = true })

  it("sends body-less POSTs with Content-Length: 0, JSON bodies with their Content-Type", function()
    assert(s:tickle())
    assert(s:init_brokerage{ compete = true })
    assert(s:init_brokerage())
    local t = m:api_log("/tickle")[1]
    assert.equal("POST", t.method)
    assert.equal("", t.body)
    assert.equal("0", t.headers["content-length"])
    assert.is_nil(t.headers["content-type"])
    assert.matches("^application/json", t.headers["accept"])
    assert.matches("^lua%-ibkr/", t.headers["user-agent"])
    local inits = m:api_log("/iserver/auth/ssodh/init")
    assert.matches("^application/json", inits[1].headers["content-type"])
    assert.equal('{"publish":true,"compete":true}', inits[1].body)
    assert.equal('{"publish":true,"compete":false}', inits[2].body)
    assert.equal("GET", (s:sso_validate() and m:api_log("/sso/validate")[1].method))
  end)

  it("request: any method and path, query and body, per-call headers", function()
    local res = assert(s:request("GET", "/iserver/accounts", { query = { a = "1 2", b = "x" },
      headers = { ["X-Trace"] = "t1" } }))
    assert.equal("table", type(res.accounts))
    local e = m:api_log("/iserver/accounts")[1]
    assert.equal("a=1%202&b=x", e.query)
    assert.equal("t1", e.headers["x-trace"])
    assert(s:request("post", "/iserver/auth/ssodh/init", { body = '{"publish":true,"compete":false}' }))
    assert.equal('{"publish":true,"compete":false}', m:api_log("/iserver/auth/ssodh/init")[1].body)
    assert.has_error(function() s:request("GET", "iserver/accounts") end)
    assert.has_error(function() s:request("GET", "/x", { nope = 1 }) end)
    assert.has_error(function() s:request("GET", "/x", { body = 1 }) end)
  end)

  it("reports non-2xx as kind http with status, body and decoded data", function()
    m:fault{ path = "/tickle", kind = "status", status = 500, body = { error = "boom" } }
    local res, err = s:tickle()
    assert.is_nil(res)
    assert.is_true(ibkr.is_error(err))
    assert.equal("http", err.kind)
    assert.equal(500, err.status)
    assert.equal("boom", err.data.error)
    assert.equal("POST", err.method)
    assert.equal("/tickle", err.path)
    assert.matches("500", tostring(err))
    assert.equal(1, #m:api_log("/tickle")) -- 500 is not retried
  end)

  it("retries 503 and 429 with backoff, honouring Retry-After", function()
    local AS = "/iserver/auth/status"
    m:fault{ path = AS, kind = "status", status = 503, count = 1 }
    m:fault{ path = AS, kind = "status", status = 429, count = 1, headers = { ["Retry-After"] = "3" } }
    local res = assert(s:auth_status())
    assert.is_true(res.authenticated)
    assert.equal(3, #m:api_log(AS))
    assert.equal(2, #ft.slept)
    assert.is_true(ft.slept[1] >= 0.125 and ft.slept[1] <= 0.25, "first backoff " .. ft.slept[1])
    assert.equal(3, ft.slept[2]) -- Retry-After wins over the backoff step
    local st = s:stats()
    assert.equal(3, st.requests)
    assert.equal(2, st.failures)
    assert.equal(2, st.retries)
    assert.equal(1, st.rate_limited)
    assert.equal(200, st.last_status)
  end)

  it("a retried tickle still keeps one tickle per second", function()
    m:fault{ path = "/tickle", kind = "status", status = 503, count = 1 }
    assert(s:tickle())
    assert.equal(2, #ft.slept)                 -- the backoff, then the rest of the second (+ margin)
    assert.near(1 + pacing.MARGIN, ft.slept[1] + ft.slept[2], 1e-9)
  end)

  it("gives up after `retries` retries and returns the last error", function()
    m:fault{ path = "/tickle", kind = "status", status = 503, count = 5 }
    local res, err = s:tickle()
    assert.is_nil(res)
    assert.equal(503, err.status)
    assert.equal(3, #m:api_log("/tickle"))
    local s0 = ibkr.new{ base_url = m.url, retries = 0, clock = ft.clock, sleep = ft.sleep }
    assert.is_nil((s0:tickle()))
    assert.equal(4, #m:api_log("/tickle"))
    s0:close()
  end)

  it("never retries request() with an unsafe method unless retry = true", function()
    m:fault{ path = "/iserver/accounts", kind = "status", status = 503, count = 10 }
    assert.is_nil((s:request("POST", "/iserver/accounts")))
    assert.equal(1, #m:api_log("/iserver/accounts"))
    assert.is_nil((s:request("DELETE", "/iserver/accounts")))
    assert.equal(2, #m:api_log("/iserver/accounts"))
    assert.is_nil((s:request("POST", "/iserver/accounts", { retry = true })))
    assert.equal(5, #m:api_log("/iserver/accounts"))
    assert.is_nil((s:request("GET", "/iserver/accounts")))
    assert.equal(8, #m:api_log("/iserver/accounts"))
    assert.is_nil((s:request("GET", "/iserver/accounts", { retry = false })))
    assert.equal(9, #m:api_log("/iserver/accounts"))
  end)

  it("does not wait for a Retry-After longer than 10 s", function()
    m:fault{ path = "/tickle", kind = "status", status = 429, count = 1,
      headers = { ["Retry-After"] = "600" } }
    local res, err = s:tickle()
    assert.is_nil(res)
    assert.equal(429, err.status)
    assert.equal(600, err.retry_after)
    assert.same({}, ft.slept)
  end)

  it("paces: waits for short delays, refuses long ones without sending", function()
    assert(s:tickle())
    assert(s:tickle())                 -- waited one (fake) second, and the margin
    assert.equal(1, #ft.slept)
    assert.near(1 + pacing.MARGIN, ft.slept[1], 1e-9)
    assert(s:sso_validate())
    ft.t = ft.t + 10
    local res, err = s:sso_validate()   -- 50 s too early
    assert.is_nil(res)
    assert.equal("rate_limited", err.kind)
    assert.near(50 + pacing.MARGIN, err.retry_after, 1e-6)
    assert.equal(1, #m:api_log("/sso/validate"))
    assert.equal(1, s:stats().rate_limited)
    ft.t = ft.t + 50
    assert(s:sso_validate())
  end)

  it("keeps every second at ten requests or fewer", function()
    for _ = 1, 25 do assert(s:auth_status()) end
    -- 25 sends: the fake clock moved at least 2 s, never sending 11 within one second
    assert.is_true(ft.t - 1000 >= 2 - 1e-9)
    local s2 = ibkr.new{ base_url = m.url, pacing = false, clock = ft.clock, sleep = ft.sleep }
    local before = ft.t
    for _ = 1, 25 do assert(s2:auth_status()) end
    assert.equal(before, ft.t)
    s2:close()
  end)

  it("health reports every state", function()
    local expect = { ready = "ready", competing = "competing", unauthenticated = "unauthenticated",
      disconnected = "disconnected", no_session = "no_session" }
    for mock_state, want in pairs(expect) do
      m:set_state(mock_state)
      local st, detail = s:health()
      assert.equal(want, st)
      assert.equal("table", type(detail))
      assert.equal(want == "ready", s:is_ready())
    end
    m:set_state("ready")
    m:fault{ path = "/iserver/auth/status", kind = "malformed" }
    local st, detail = s:health()
    assert.equal("error", st)
    assert.equal("json", detail.kind)
  end)

  it("health is 'down' when nothing listens", function()
    local dead = ibkr.new{ base_url = "http://127.0.0.1:9/v1/api", retries = 0 }
    local st, err = dead:health()
    assert.equal("down", st)
    assert.equal("connect", err.kind)
    assert.is_false(dead:is_ready())
    dead:close()
  end)

  it("wait_ready re-initialises an unauthenticated session", function()
    m:set_state("unauthenticated")
    local st = assert(s:wait_ready{ timeout = 30 })
    assert.is_true(st.authenticated)
    assert.equal(1, #m:api_log("/iserver/auth/ssodh/init"))
  end)

  it("wait_ready falls back to reauthenticate when ssodh/init answers 410", function()
    m:set_state("unauthenticated")
    m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 410, count = 10 }
    assert(s:wait_ready{ timeout = 30 })
    assert.equal(1, #m:api_log("/iserver/reauthenticate"))
  end)

  it("wait_ready leaves a competing session alone unless compete = true", function()
    m:set_state("competing")
    local res, err = s:wait_ready{ timeout = 5 }
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.equal("competing", err.state)
    assert.equal(0, #m:api_log("/iserver/auth/ssodh/init"))
    assert.is_true(ft.t - 1000 >= 5)
    assert(s:wait_ready{ timeout = 5, compete = true })
    assert.is_true(require("cjson").decode(m:api_log("/iserver/auth/ssodh/init")[1].body).compete)
  end)

  it("wait_ready with init = false only polls", function()
    m:set_state("unauthenticated")
    local res, err = s:wait_ready{ timeout = 3, init = false }
    assert.is_nil(res)
    assert.equal("unauthenticated", err.state)
    assert.equal(0, #m:api_log("/iserver/auth/ssodh/init"))
  end)
end)
