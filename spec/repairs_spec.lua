-- A repair counts only when the gateway confirms it: ssodh/init's own "authenticated" is no proof
-- (gateways drop the session again right after login, ibeam #130, #7), only auth/status (or a
-- tickle's authStatus) says ready; a repair the session falls back from before it held STICK
-- seconds counts as failed, so repairs back off. The mock's relapse settings emulate such a
-- gateway; requests are counted on its side; long times pass on a fake clock.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local repair = require("ibkr.repair")
local mock = require("spec.helpers.mock")
local cli = require("spec.helpers.cli")
local fake_time = require("spec.helpers.clock").new
local ka = require("spec.helpers.keepalive")

describe("repairs confirmed by auth/status", function()
  local m, ft, s
  setup(function()
    m = assert(mock.start{ tls = false, pacing = false, state = "unauthenticated", init_delay = 0,
      reauth_delay = 0 })
  end)
  teardown(function() m:stop() end)
  before_each(function()
    m:reset()
    ft = fake_time()
    s = ibkr.new{ base_url = m.url, clock = ft.clock, sleep = ft.sleep }
  end)
  after_each(function() s:close() end)

  it("the mock: a repaired session falls back at the n-th request, or after n seconds", function()
    m:config{ relapse_requests = 2 }
    local r = assert(m:request("POST", "/v1/api/iserver/auth/ssodh/init",
      { body = '{"publish":true,"compete":false}', headers = { ["Content-Type"] = "application/json" } }))
    assert.matches('"authenticated":true', r.body)
    local function auth()
      return assert(m:request("POST", "/v1/api/iserver/auth/status")).body:match('"authenticated":(%a+)')
    end
    assert.equal("true", auth())  -- the first request after it: still ready
    assert.equal("false", auth()) -- the second: fallen back
    assert.equal(1, m:state().counters.relapses)
    m:config{ relapse_requests = 0, relapse = 0.2 }
    assert.equal(200, m:request("POST", "/v1/api/iserver/reauthenticate").status)
    assert.equal("true", auth())
    local deadline = core.monotonic() + 10
    repeat assert(core.monotonic() < deadline, "never fell back") until auth() == "false"
    assert.equal(2, m:state().counters.relapses)
  end)

  it("wait --init does not end ready on a session auth/status never confirmed", function()
    m:config{ relapse_requests = 1 } -- ssodh/init (and reauthenticate) say yes, auth/status no
    local rc, out, err = cli.run{ "--url", m.url, "wait", "--init", "--timeout", "6" }
    assert.equal(1, rc) -- was 0: `wait --init && start-bot` started the bot
    assert.equal("", out)
    assert.matches("state: unauthenticated", err)
    assert.is_true(#m:api_log("/iserver/auth/ssodh/init") >= 1)
    local res, e = s:wait_ready{ timeout = 30 }
    assert.is_nil(res)
    assert.equal("unauthenticated", e.state)
  end)

  it("ibkr-session init and s:state() take no 'authenticated' from ssodh/init's answer alone", function()
    m:config{ relapse_requests = 1 }
    local rc, out = cli.run{ "--url", m.url, "init" }
    assert.equal(0, rc) -- accepted
    assert.matches("^init accepted, pending", out) -- was "ready (authenticated=true ...)"
    m:reset()
    m:config{ relapse_requests = 1 }
    local res = assert(s:init_brokerage())
    assert.is_true(res.authenticated)
    assert.is_nil((s:state())) -- nothing confirmed it: no state recorded
    assert.equal("unauthenticated", (s:health()))
    -- without the relapse the answer is confirmed
    m:reset()
    rc, out = cli.run{ "--url", m.url, "init" }
    assert.equal(0, rc)
    assert.matches("^ready %(", out)
  end)

  it("the keep-alive backs off repairs that do not stick instead of one every other tickle", function()
    m:config{ relapse_requests = 2 } -- confirmed once by auth/status, gone at the next tickle
    local rec = ka.start(s, { interval = 5, retry_interval = 5 })
    local stop = ft.t + 120
    while ft.t < stop do assert(ka.turn(rec.co, ft, 1)) end
    local inits = #m:api_log("/iserver/auth/ssodh/init")
    -- a repair every other 5 s turn would be 12; backing off 5, 10, 20, 40, 80 s: at most 5
    assert.is_true(inits >= 3 and inits <= 5, inits .. " ssodh/init in 120 s")
    local flips = 0
    for _, st in ipairs(rec.states) do if st.new == "ready" then flips = flips + 1 end end
    assert.equal(inits, flips) -- each repair did make it ready, as auth/status said, for a moment
  end)

  it("a repair that sticks resets the backoff", function()
    local sched = repair.new(5)
    assert.equal(5, sched:failed(0))
    assert.equal(10, sched:failed(10))
    sched:repaired(30)
    sched:seen(true, 40)          -- ready 10 s later: not yet proven
    assert.equal(2, sched.fails)
    sched:seen(false, 50)         -- fell back 20 s after the repair: a failed repair
    assert.equal(3, sched.fails)
    assert.is_false(sched:due(55))
    sched:repaired(100)
    sched:seen(true, 100 + repair.STICK) -- still ready a minute later: it stuck
    assert.equal(0, sched.fails)
    assert.is_true(sched:due(200))
  end)
end)
