-- The ibkr layer against what real gateways answer (public reports, replayed by the mock gateway,
-- a real subprocess): a 2xx that carries an error, repairs that fail or take time, Retry-After and
-- the penalty box, one transport blip, the gateway's own 503, the login page, texts that must reach
-- the user, init = false, any JSON value where an object is expected, options that must mean what
-- they say, and s:state(). Long waits (a 600 s penalty box, 15 s for reauthenticate) run on an
-- injected fake clock; the wire is real.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local gateway = require("spec.helpers.gateway")


local ka = require("spec.helpers.keepalive")
local turn, start = ka.turn, ka.start

local function messages(errs)
  local t = {}
  for i, e in ipairs(errs) do t[i] = tostring(e.message) end
  return table.concat(t, "\n")
end

describe("the ibkr layer against what gateways answer", function()
  local m, s, ft
  gateway.each(function(f) m, s, ft = f.m, f.s, f.ft end, { session = true })

  describe("a 2xx answer carrying an error is no success", function()
    it("a failed tickle is reported and the state comes from auth/status", function()
      m:fault{ path = "/tickle", kind = "error_body", count = 5 }
      local k = start(s, { interval = 60 })
      assert.equal(60, turn(k.co, ft))
      assert.equal("ready", k.names()[1]) -- /iserver/auth/status said so
      assert.equal(200, k.errors[1].status)
      assert.matches("failed to process request", k.errors[1].message, 1, true)
      -- one line naming the request once: "ibkr: http: POST /tickle: failed to process request"
      assert.equal("ibkr: http: POST /tickle: failed to process request", tostring(k.errors[1]))
      assert.equal(1, #m:api_log("/iserver/auth/status"))
    end)

    it("health() judges the body: an error, a missing authenticated, a non-object", function()
      for _, body in ipairs{ '{"error":"failed to process request"}', '{"connected":true}', "null", "5",
                             "true", "[1]" } do
        m:fault{ path = "/iserver/auth/status", kind = "status", status = 200, body = body }
        local st, detail = s:health()
        assert.equal("error", st, body)
        assert.is_true(ibkr.is_error(detail), body)
        assert.equal(200, detail.status)
      end
      m:fault{ path = "/iserver/auth/status", kind = "error_body", error = "no session" }
      assert.equal("no_session", (s:health()))
    end)

    it("a validate that says RESULT false, during the keep-alive, is reported", function()
      m:fault{ path = "/sso/validate", kind = "status", status = 200, body = '{"RESULT":false}' }
      local k = start(s, { interval = 60, validate_interval = 60 })
      turn(k.co, ft)
      turn(k.co, ft) -- validate is due after 60 s
      assert.equal(1, #m:api_log("/sso/validate"))
      assert.matches("RESULT is false", messages(k.errors), 1, true)
      assert.same({ "ready" }, k.names()) -- comes and goes while the session stays up (ibeam #164)
    end)
  end)

  describe("repairs escalate and back off", function()
    it("ssodh/init answering 503 falls back to reauthenticate, which is given time", function()
      m:config{ reauth_delay = 1.5 }
      m:set_state("unauthenticated")
      m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 503, body = "", count = 1000 }
      local rs = ibkr.new{ base_url = m.url } -- real time: the mock's 1.5 s are real
      local k = start(rs, { interval = 60, retry_interval = 5 })
      local give_up = core.monotonic() + 60
      while #k.repairs < 2 do -- until the reauthenticate is reported (then it sleeps 60 s)
        assert.is_true(core.monotonic() < give_up, "no repair reported")
        ibkr.run(k.co, { duration = 0.25 })
      end
      rs:close()
      assert.same({ "unauthenticated", "ready" }, k.names())
      assert.equal("init_brokerage", k.repairs[1][1])
      assert.is_nil(k.repairs[1][2]) -- not "ok"
      assert.equal(503, k.repairs[1][3].status)
      assert.equal("reauthenticate", k.repairs[2][1])
      assert.is_true(k.repairs[2][2].authenticated)
      assert.equal(3, #m:api_log("/iserver/auth/ssodh/init")) -- one try and its two retries
      assert.equal(1, #m:api_log("/iserver/reauthenticate")) -- not re-triggered while it works
    end)

    it("a 200 from ssodh/init that stays unauthenticated also falls back", function()
      m:set_state("unauthenticated")
      m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 200, count = 1000,
        body = '{"authenticated":false,"connected":true,"competing":false}' }
      local k = start(s, { interval = 60, retry_interval = 5 })
      assert.equal(60, turn(k.co, ft, 60))
      assert.equal("init_brokerage", k.repairs[1][1])
      assert.equal("timeout", k.repairs[1][3].kind)
      assert.equal("unauthenticated", k.repairs[1][3].state)
      assert.equal("reauthenticate", k.repairs[2][1])
      assert.same({ "unauthenticated", "ready" }, k.names())
    end)

    it("failed repairs are reported as failed and back off exponentially, capped", function()
      m:set_state("unauthenticated")
      m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 410, count = 10000 }
      -- reauthenticate is "triggered" but never takes effect (a new login is needed: ibeam #42)
      m:fault{ path = "/iserver/reauthenticate", kind = "status", status = 200, count = 10000,
        body = '{"message":"triggered"}' }
      local k = start(s, { interval = 60, retry_interval = 5 })
      local t0 = ft.t
      local starts = {}
      -- (the mock's counters, not its log: the log grows by thousands of polls here)
      local function reauths() return m:state().counters.by_path["/iserver/reauthenticate"] or 0 end
      for _ = 1, 400 do
        local before = reauths()
        turn(k.co, ft, 5)
        if reauths() > before then starts[#starts + 1] = ft.t - t0 end
        if ft.t - t0 > 3000 then break end
      end
      for _, r in ipairs(k.repairs) do assert.is_nil(r[2]) end
      assert.equal("reauthenticate", k.repairs[2][1])
      assert.matches("not ready 15 s after reauthenticate", tostring(k.repairs[2][3].message), 1, true)
      -- gaps between repairs: 15 s of waiting each, plus 5, 10, 20, ... 300 s of backoff
      local gaps = {}
      for i = 2, #starts do gaps[#gaps + 1] = starts[i] - starts[i - 1] end
      assert.is_true(#gaps >= 5, "repairs: " .. #starts)
      for i = 2, #gaps do assert.is_true(gaps[i] >= gaps[i - 1] - 1e-6, "gaps grow") end
      assert.is_true(gaps[#gaps] <= 15 + 300 + 5 + 1, "capped: " .. gaps[#gaps])
      assert.is_true(#starts < 20)
    end)
  end)

  describe("the gateway's Retry-After is obeyed", function()
    it("the penalty box: 429 Retry-After 600 holds back every call and the keep-alive sleeps", function()
      m:control("POST", "/__mock/penalty", { seconds = 600 })
      local k = start(s, { interval = 5, retry_interval = 5 })
      local wait = turn(k.co, ft)
      assert.is_true(wait >= 599, "slept " .. wait)
      assert.equal(1, #m:api_log("/tickle")) -- 600 s is past the call's deadline: no retry
      assert.equal(429, k.errors[1].status)
      assert.equal(600, k.errors[1].retry_after)
      -- any other call of the session is refused without sending
      ft.t = ft.t - wait + 1 -- (back to 1 s after the 429: the keep-alive's sleep not yet over)
      local n = #m:log()
      for _, f in ipairs{ "auth_status", "tickle", "sso_validate", "logout" } do
        local r, err = s[f](s)
        assert.is_nil(r)
        assert.equal("rate_limited", err.kind, f)
        assert.is_true(err.retry_after > 590 and err.retry_after <= 600, f)
      end
      local r, err = s:request("GET", "/portfolio/accounts")
      assert.is_nil(r)
      assert.equal("rate_limited", err.kind)
      assert.equal(n, #m:log())
      -- each tickle after the hold hits the (extended) box again: one request per 600 s
      ft.t = ft.t + wait - 1
      for _ = 1, 3 do assert.is_true(turn(k.co, ft) >= 599) end
      assert.equal(4, #m:api_log("/tickle"))
    end)

    it("pacing = false keeps the gateway's hold", function()
      local u = ibkr.new{ base_url = m.url, pacing = false, clock = ft.clock, sleep = ft.sleep }
      m:fault{ path = "/tickle", kind = "status", status = 503, headers = { ["Retry-After"] = "120" } }
      local _, err = u:tickle()
      assert.equal(503, err.status)
      local _, err2 = u:auth_status()
      assert.equal("rate_limited", err2.kind)
      ft.t = ft.t + 121
      assert(u:auth_status())
      u:close()
    end)
  end)

  describe("one transport blip does not flip the state", function()
    it("Connection: close answers, the third connection dropped with no response", function()
      m:config{ connection_close = true }
      m:fault{ path = "/tickle", kind = "drop", after = 2 }
      local k = start(s, { interval = 60 })
      for _ = 1, 4 do assert.equal(60, turn(k.co, ft)) end
      assert.same({ "ready" }, k.names())
      assert.same({}, k.errors)
      assert.equal(5, #m:api_log("/tickle")) -- 4 turns, one of them retried
    end)

    it("a dropped POST of s:request is not repeated unless retry = true", function()
      m:fault{ path = "/iserver/accounts", kind = "drop", count = 2 }
      local _, err = s:request("POST", "/iserver/accounts")
      assert.equal("protocol", err.kind)
      assert.equal(1, #m:api_log("/iserver/accounts"))
      local _, err2 = s:request("POST", "/iserver/accounts", { retry = true })
      assert.equal(405, err2.status) -- dropped once more, tried again: the mock allows only GET
      assert.equal(3, #m:api_log("/iserver/accounts"))
    end)
  end)

  describe("what the gateway said arrives within a bounded time", function()
    it("the gateway's own 503 (backend silent) reaches the user, not our timeout", function()
      -- scaled down: the gateway waits 1 s, the exchange may take 5, the call 8 in all
      m:fault{ path = "/tickle", kind = "backend_timeout", seconds = 1, count = 10 }
      local u = ibkr.new{ base_url = m.url, timeout = 5, deadline = 8 }
      local r, err = u:tickle()
      u:close()
      assert.is_nil(r)
      assert.equal(503, err.status)
    end)

    it("the defaults outlast the gateway's 10 s and bound the call", function()
      assert.is_true(ibkr.DEFAULT_TIMEOUT > 10)
      assert.is_true(ibkr.DEADLINE_EXTRA > 0)
    end)

    it("wait_ready{timeout = 0.5} is a deadline against a gateway that does not answer", function()
      m:fault{ kind = "hold", seconds = 30, count = 100 } -- an answer only after 30 s
      local u = ibkr.new{ base_url = m.url }
      local r, err = u:wait_ready{ timeout = 0.5 }
      u:close()
      assert.is_nil(r)
      assert.equal("timeout", err.kind) -- the deadline ended it, not an answer
      assert.equal(1, #m:held())
    end)
  end)

  describe("being sent to the login page means the session is gone", function()
    it("302 to /sso/Login or /sso/Dispatcher is no_session, in health() and the keep-alive", function()
      for _, loc in ipairs{ false, "/sso/Dispatcher" } do
        m:fault{ kind = "redirect", location = loc or nil, count = 2 }
        assert.equal("no_session", (s:health()))
        m:clear_faults()
      end
      m:fault{ path = "/tickle", kind = "redirect" }
      local k = start(s, { interval = 60 })
      turn(k.co, ft)
      assert.equal("no_session", k.names()[1])
      assert.equal(0, #m:api_log("/iserver/auth/ssodh/init")) -- only a browser login helps
    end)

    it("an HTML 403 'Access Denied' page is an error with the status", function()
      m:fault{ path = "/iserver/auth/status", kind = "html", status = 403, title = "Access Denied" }
      local st, err = s:health()
      assert.equal("error", st)
      assert.equal(403, err.status)
    end)
  end)

  describe("what the gateway says reaches the user", function()
    it("the status body's fail text is in on_state's detail and why", function()
      local fail = "Force compete capability must be used together with compete flag"
      m:fault{ path = "/tickle", kind = "status", status = 200, body = string.format(
        '{"iserver":{"authStatus":{"authenticated":false,"connected":true,"competing":false,"fail":"%s"}}}',
        fail) }
      local k = start(s, { interval = 60, init = false })
      turn(k.co, ft)
      assert.equal("unauthenticated", k.states[1].new)
      assert.equal(fail, k.states[1].why)
      assert.equal(fail, k.states[1].detail.fail)
    end)

    it("a failed ssodh/init's fail text reaches on_repair", function()
      m:set_state("unauthenticated")
      m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 200,
        body = '{"authenticated":false,"connected":true,"fail":"no permission"}' }
      local k = start(s, { interval = 60 })
      turn(k.co, ft, 60)
      assert.matches("no permission", k.repairs[1][3].message, 1, true)
    end)
  end)

  describe("init = false keeps only the SSO session", function()
    it("tickles, never ssodh/init nor reauthenticate", function()
      m:set_state("unauthenticated")
      local k = start(s, { interval = 60, retry_interval = 5, init = false })
      for _ = 1, 5 do assert.equal(5, turn(k.co, ft)) end
      assert.equal(5, #m:api_log("/tickle"))
      assert.equal(0, #m:api_log("/iserver/auth/ssodh/init"))
      assert.equal(0, #m:api_log("/iserver/reauthenticate"))
      assert.same({ "unauthenticated" }, k.names())
    end)
  end)

  describe("any JSON value where an object is expected", function()
    it("ssodh/init answering null, 5, true: the keep-alive and ibkr.run go on", function()
      for _, body in ipairs{ "null", "5", "true", "[]", '"x"' } do
        m:reset()
        m:set_state("unauthenticated")
        m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 200, body = body }
        m:fault{ path = "/iserver/reauthenticate", kind = "status", status = 200, body = body }
        m:fault{ path = "/tickle", kind = "status", status = 200, body = body }
        local u = ibkr.new{ base_url = m.url, clock = ft.clock, sleep = ft.sleep }
        local k = start(u, { interval = 60, retry_interval = 5 })
        turn(k.co, ft, 5)
        assert.is_nil(k.repairs[1][2], body)
        local want = body == "[]" and "no authenticated" or "not a JSON object" -- [] reads as {}
        assert.matches(want, k.repairs[1][3].message, 1, true)
        assert.matches(body == "[]" and "no message" or "not a JSON object", k.repairs[2][3].message, 1, true)
        assert.equal("suspended", coroutine.status(k.co))
        u:close()
      end
    end)
  end)

  describe("options mean what they say", function()
    it("wait_ready raises on unknown options, NaN, negative and infinite timeouts", function()
      assert.has_error(function() s:wait_ready{ timeuot = 1 } end)
      assert.has_error(function() s:wait_ready{ timeout = 0 / 0 } end)
      assert.has_error(function() s:wait_ready{ timeout = -1 } end)
      assert.has_error(function() s:wait_ready{ timeout = math.huge } end)
      assert.has_error(function() s:wait_ready{ init = "yes" } end)
    end)

    it("ibkr.new refuses NaN, negative and infinite numbers; retries = math.huge raises", function()
      for _, o in ipairs{ { retries = math.huge }, { retries = -1 }, { timeout = 0 / 0 }, { timeout = -1 },
                          { timeout = math.huge }, { connect_timeout = 0 / 0 }, { deadline = 0 },
                          { deadline = 0 / 0 }, { max_body = -5 }, { proxy = 5 } } do
        o.base_url = m.url
        assert.has_error(function() ibkr.new(o) end)
      end
      ibkr.new{ base_url = m.url, proxy = "http://127.0.0.1:9", deadline = 3 }:close()
    end)

    it("keepalive refuses NaN and infinite intervals", function()
      assert.has_error(function() s:keepalive{ interval = 0 / 0 } end)
      assert.has_error(function() s:keepalive{ retry_interval = math.huge } end)
    end)
  end)

  describe("s:state()", function()
    it("is nil before anything was observed, then the last state any call saw, with its age", function()
      assert.is_nil(s:state())
      assert(s:tickle())
      local st, detail, age = s:state()
      assert.equal("ready", st)
      assert.is_true(detail.authenticated)
      assert.equal(0, age)
      ft.t = ft.t + 7
      assert.equal(7, select(3, s:state()))
      m:set_state("unauthenticated")
      assert(s:auth_status())
      assert.equal("unauthenticated", (s:state()))
      m:fault{ path = "/portfolio/accounts", kind = "status", status = 401 }
      s:request("GET", "/portfolio/accounts")
      assert.equal("no_session", (s:state()))
    end)

    it("follows the keep-alive", function()
      local k = start(s, { interval = 60, init = false })
      turn(k.co, ft)
      assert.equal("ready", (s:state()))
      m:set_state("competing")
      turn(k.co, ft)
      assert.equal("competing", (s:state()))
    end)
  end)
end)
