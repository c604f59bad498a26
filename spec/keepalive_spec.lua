-- The keep-alive against the mock gateway (a real subprocess), on an injected fake clock:
-- every wait the keep-alive asks for moves the fake clock; only requests in flight take real
-- time (the driver resumes at once until they finish).
local ibkr = require("ibkr")
local core = require("ibkr.core")
local cjson = require("cjson")
local mock = require("spec.helpers.mock")
local gateway = require("spec.helpers.gateway")

local fake_time = require("spec.helpers.clock").new
local state_of = require("ibkr.state").of_status

local ka = require("spec.helpers.keepalive")
local turn, start, STEP = ka.turn, ka.start, ka.STEP

describe("keep-alive", function()
  local m, s, ft
  gateway.each(function(f) m, s, ft = f.m, f.s, f.ft end, { session = true })

  it("reports the first state with old = nil, then tickles every interval", function()
    local k = start(s, { interval = 60 })
    assert.equal(60, turn(k.co, ft))
    assert.same({ new = "ready", old = nil }, { new = k.states[1].new, old = k.states[1].old })
    assert.is_true(k.states[1].detail.authenticated)
    assert.equal(60, turn(k.co, ft))
    assert.equal(60, turn(k.co, ft))
    assert.equal(3, #m:api_log("/tickle"))
    assert.equal(1, #k.states) -- no change, no call
    assert.same({}, k.errors)
  end)

  it("notices idle expiry and re-initialises the session", function()
    local k = start(s, { interval = 60 })
    turn(k.co, ft)
    -- The gateway expires sessions idle for idle_timeout: make it short and wait for the mock to
    -- say so (a bounded poll of its control API, which does not count as activity).
    m:config{ idle_timeout = 0.2 }
    local deadline = core.monotonic() + 5
    while m:state().state ~= "unauthenticated" do
      assert(core.monotonic() < deadline, "mock never expired the session")
    end
    m:config{ idle_timeout = 300 }
    assert.equal(60, turn(k.co, ft))              -- repaired: back to the normal interval
    assert.equal("unauthenticated", k.states[2].new)
    assert.equal("ready", k.states[3].new)        -- confirmed by auth/status after ssodh/init
    assert.equal(1, #m:api_log("/iserver/auth/ssodh/init"))
    assert.is_false(cjson.decode(m:api_log("/iserver/auth/ssodh/init")[1].body).compete)
    assert.equal("init_brokerage", k.repairs[1][1])
    assert.equal(60, turn(k.co, ft))
    assert.equal("ready", k.last())
  end)

  it("repairs an unauthenticated session whose init answer is not yet ready, polling it", function()
    m:config{ init_delay = 0.3 }
    m:set_state("unauthenticated")
    -- real time here: the mock's delay is real, the repair polls /iserver/auth/status each second
    local rs = ibkr.new{ base_url = m.url }
    local k = start(rs, { interval = 60, retry_interval = 2 })
    ibkr.run(k.co, { duration = 2.5 })
    rs:close()
    assert.same({ "unauthenticated", "ready" }, { k.states[1].new, k.states[2].new })
    assert.same({ "init_brokerage" }, { k.repairs[1][1] })
    assert.equal("ready", state_of(k.repairs[1][2]))
    assert.is_nil(k.repairs[1][3])
  end)

  it("falls back to reauthenticate when ssodh/init answers 404, 405 or 410", function()
    for _, status in ipairs{ 404, 405, 410 } do
      m:reset()
      m:clear_faults()
      m:set_state("unauthenticated")
      m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = status, count = 100 }
      local k = start(s, { interval = 60, retry_interval = 2 })
      assert.equal(60, turn(k.co, ft, 60))
      assert.equal("init_brokerage", k.repairs[1][1], "status " .. status)
      assert.is_nil(k.repairs[1][2])
      assert.equal(status, k.repairs[1][3].status)
      assert.equal("reauthenticate", k.repairs[2][1], "status " .. status)
      assert.equal("ready", state_of(k.repairs[2][2]))
      assert.equal(1, #m:api_log("/iserver/reauthenticate"))
      assert.equal("ready", k.last())
      s:stop()
      assert.is_nil(turn(k.co, ft))
    end
  end)

  it("reports competing and leaves it alone by default", function()
    local k = start(s, { interval = 60 })
    turn(k.co, ft)
    m:set_state("competing")
    assert.equal(5, turn(k.co, ft))
    assert.equal(5, turn(k.co, ft))
    assert.same({ "ready", "competing" }, { k.states[1].new, k.states[2].new })
    assert.equal("ready", k.states[2].old)
    assert.equal(0, #m:api_log("/iserver/auth/ssodh/init"))
    m:set_state("ready") -- the other session went away
    assert.equal(60, turn(k.co, ft))
    assert.equal("ready", k.last())
  end)

  it("takes the session over when compete = true", function()
    m:set_state("competing")
    local k = start(s, { interval = 60, compete = true })
    turn(k.co, ft)
    assert.same({ "competing", "ready" }, { k.states[1].new, k.states[2].new })
    assert.is_true(cjson.decode(m:api_log("/iserver/auth/ssodh/init")[1].body).compete)
  end)

  it("reports a disconnected gateway and re-initialises it", function()
    m:set_state("disconnected")
    local k = start(s, { interval = 60 })
    turn(k.co, ft)
    assert.same({ "disconnected", "ready" }, { k.states[1].new, k.states[2].new })
  end)

  it("survives logout (no_session) and sees the next login", function()
    local k = start(s, { interval = 60 })
    turn(k.co, ft)
    m:set_state("no_session")
    assert.equal(5, turn(k.co, ft))
    assert.equal(5, turn(k.co, ft))
    assert.equal("no_session", k.last())
    assert.equal(401, k.errors[1].status)
    assert.equal(2, #k.errors)  -- on_error for every failed call
    assert.equal(0, #m:api_log("/iserver/auth/ssodh/init")) -- nothing to repair without a login
    m:login("ready")
    assert.equal(60, turn(k.co, ft))
    assert.equal("ready", k.last())
  end)

  it("treats a 401 as no_session, a 200 {error: no session} too", function()
    local k = start(s, { interval = 60 })
    m:fault{ path = "/tickle", kind = "status", status = 401, body = { error = "not authenticated" } }
    turn(k.co, ft)
    assert.equal("no_session", k.last())
    turn(k.co, ft)
    m:fault{ path = "/tickle", kind = "error_body", error = "no session" }
    turn(k.co, ft)
    turn(k.co, ft)
    local names = {}
    for _, st in ipairs(k.states) do names[#names + 1] = st.new end
    assert.same({ "no_session", "ready", "no_session", "ready" }, names)
  end)

  it("asks /iserver/auth/status when a tickle body has no authStatus", function()
    local k = start(s, { interval = 60 })
    m:fault{ path = "/tickle", kind = "error_body", error = "failed to process request" }
    m:set_state("competing")
    turn(k.co, ft)
    assert.equal("competing", k.last())
    assert.equal(1, #m:api_log("/iserver/auth/status"))
  end)

  it("rides out a 503 with retries; a 429 without Retry-After holds it back, state kept", function()
    local k = start(s, { interval = 60 })
    m:fault{ path = "/tickle", kind = "status", status = 503, count = 1 }
    assert.equal(60, turn(k.co, ft))
    assert.equal("ready", k.last())
    assert.same({}, k.errors)
    m:fault{ path = "/tickle", kind = "status", status = 429, count = 1 }
    local held = turn(k.co, ft)
    -- the tickle did not get through: the session holds every call back (IBKR's penalty box
    -- grows with each request), not retried inside the call
    assert.is_true(held >= 60 and held <= 66, "held " .. held)
    assert.equal("ready", k.last()) -- "not now" says nothing about the session: no flip
    assert.equal(429, k.errors[1].status)
    assert.equal(3, #m:api_log("/tickle"))
    assert.equal(60, turn(k.co, ft))
    assert.equal("ready", k.last())
  end)

  it("reports a JSON error and goes on", function()
    local k = start(s, { interval = 60 })
    m:fault{ path = "/tickle", kind = "malformed" }
    turn(k.co, ft)
    assert.equal("error", k.last())
    assert.equal("json", k.errors[1].kind)
    turn(k.co, ft)
    assert.equal("ready", k.last())
  end)

  it("survives the gateway being killed and restarted on the same port", function()
    -- (a spare port: no other spec's server takes it while this gateway is down)
    local m2 = assert(mock.start{ tls = false, pacing = false,
      args = { "--port", tostring(require("spec.helpers.raw").spare_port()) } })
    local s2 = ibkr.new{ base_url = m2.url, clock = ft.clock, sleep = ft.sleep }
    local k = start(s2, { interval = 60, retry_interval = 3 })
    turn(k.co, ft)
    m2:stop("KILL")
    assert.equal(3, turn(k.co, ft))
    assert.equal("down", k.last())
    assert.equal("connect", k.errors[1].kind)
    assert.equal(3, turn(k.co, ft))
    local m3 = assert(mock.start{ tls = false, pacing = false, args = { "--port", tostring(m2.port) } })
    assert.equal(m2.port, m3.port)
    assert.equal(60, turn(k.co, ft))
    assert.same({ "ready", "down", "ready" }, { k.states[1].new, k.states[2].new, k.states[3].new })
    s2:close()
    m3:stop()
  end)

  it("reports errors raised in on_state and in on_repair through on_error, and goes on", function()
    local errors = {}
    local k = s:keepalive{
      interval = 60,
      on_state = function() error("boom in on_state") end,
      on_repair = function() error({ "a table" }) end,
      on_error = function(e) errors[#errors + 1] = e; error("on_error fails too") end,
    }
    turn(k, ft)
    m:set_state("unauthenticated")
    turn(k, ft)
    turn(k, ft)
    assert.equal("suspended", coroutine.status(k))
    assert.equal("callback", errors[1].kind)
    assert.equal("on_state", errors[1].callback)
    assert.matches("boom in on_state", errors[1].message)
    local repair_err
    for _, e in ipairs(errors) do if e.callback == "on_repair" then repair_err = e end end
    assert.same({ "a table" }, repair_err.cause)
  end)

  it("goes on when a callback raises a value whose __tostring raises, yields or gives no string", function()
    local bad = {
      setmetatable({}, { __tostring = function() error("tostring boom") end }),
      setmetatable({}, { __tostring = function() coroutine.yield(1) end }),
      setmetatable({}, { __tostring = function() return 42 end }),
    }
    for _, v in ipairs(bad) do
      local errors = {}
      local k = s:keepalive{ interval = 60,
        on_state = function() error(v) end,
        on_error = function(e) errors[#errors + 1] = e end }
      turn(k, ft)
      assert.equal("suspended", coroutine.status(k))
      assert.equal("callback", errors[1].kind)
      assert.equal(v, errors[1].cause)
      assert.matches("^error in on_state: ", errors[1].message)
      s:stop()
    end
  end)

  it("also validates the SSO session, never more often than once a minute", function()
    local k = start(s, { interval = 20, validate_interval = 10 })
    for _ = 1, 7 do turn(k.co, ft) end -- 140 s
    assert.equal(2, #m:api_log("/sso/validate"))
    assert.same({}, k.errors)
  end)

  it("ends at its next resume after s:stop(); a new keep-alive runs after that", function()
    local k = start(s, { interval = 60 })
    turn(k.co, ft)
    s:stop()
    assert.is_true(coroutine.resume(k.co))
    assert.equal("dead", coroutine.status(k.co))
    local k2 = start(s, { interval = 60 })
    assert.equal(60, turn(k2.co, ft))
    -- a keep-alive created before stop() ends even if it never ran
    local k3 = start(s, { interval = 60 })
    s:stop()
    assert.is_nil(turn(k3.co, ft))
    assert.equal(0, #k3.states)
  end)

  it("ends at the next resume after s:stop() in the middle of a request, freeing it", function()
    m:fault{ path = "/tickle", kind = "hold" } -- in flight until released: here, never
    local k = start(s, { interval = 60 })
    local _, wait = coroutine.resume(k.co)
    assert.is_true(wait <= STEP)
    assert.is_true(s:stats().in_flight > 0)
    s:stop()
    assert.is_true(coroutine.resume(k.co))
    assert.equal("dead", coroutine.status(k.co))
    assert.equal(0, s:stats().in_flight)
    assert.same({}, k.errors) -- stopping is not a failure
    assert(s:auth_status())
  end)

  it("with init = false only reports an unauthenticated session", function()
    m:set_state("unauthenticated")
    local k = start(s, { interval = 60, init = false })
    assert.equal(5, turn(k.co, ft))
    assert.equal(5, turn(k.co, ft))
    assert.equal("unauthenticated", k.last())
    assert.equal(0, #m:api_log("/iserver/auth/ssodh/init"))
    assert.equal(0, #m:api_log("/iserver/reauthenticate"))
  end)

  it("ends after s:close(), even in the middle of a request", function()
    m:fault{ path = "/tickle", kind = "hold" } -- in flight until released: here, never
    local k = start(s, { interval = 60 })
    local ok, wait = coroutine.resume(k.co)
    assert.is_true(ok)
    assert.is_true(wait <= STEP)   -- in flight
    s:close()
    assert.is_true(coroutine.resume(k.co))
    assert.equal("dead", coroutine.status(k.co))
    assert.equal(0, #k.states)
  end)

  it("coroutine.close() frees the request in flight", function()
    m:fault{ path = "/tickle", kind = "hold" } -- in flight until released: here, never
    local k = start(s, { interval = 60 })
    local _, wait = coroutine.resume(k.co)
    assert.is_true(wait <= STEP)
    assert.is_true(s:stats().in_flight > 0)
    assert.is_true(coroutine.close(k.co))
    assert.equal(0, s:stats().in_flight)
    assert(s:auth_status())       -- the session is free at once
  end)

  it("keepalive_loop runs inline with the host's sleep, noticing stop() within a second", function()
    local slept = {}
    s:keepalive_loop{
      interval = 30,
      sleep = function(secs)
        slept[#slept + 1] = secs
        if secs > STEP then
          ft.t = ft.t + secs
          if #m:api_log("/tickle") == 3 and ft.t >= 1065 then s:stop() end
        end
      end,
    }
    assert.equal(3, #m:api_log("/tickle"))
    assert.equal(1065, ft.t)       -- tickles at 1000, 1030, 1060; stopped during the third pause
    for _, x in ipairs(slept) do assert.is_true(x <= 1) end
  end)

  it("keepalive_loop without sleep blocks with the session's sleep", function()
    local s2
    s2 = ibkr.new{ base_url = m.url, clock = ft.clock, sleep = function(secs)
      ft.t = ft.t + secs
      if ft.t >= 1130 then s2:stop() end
    end }
    s2:keepalive_loop{ interval = 60 }
    assert.equal(3, #m:api_log("/tickle")) -- at 1000, 1060, 1120
    assert.equal(1130, ft.t)
    s2:close()
  end)

  it("rejects bad options when created", function()
    assert.has_error(function() s:keepalive{ interval = 0 } end)
    assert.has_error(function() s:keepalive{ intervall = 5 } end)
    assert.has_error(function() s:keepalive{ on_state = "x" } end)
    assert.has_error(function() s:keepalive{ sleep = function() end } end) -- only for keepalive_loop
  end)
end)

describe("ibkr.run", function()
  it("resumes each coroutine when due and sleeps exactly until the earliest wake-up", function()
    local ft = fake_time()
    local log, sleeps = {}, {}
    local function worker(name, waits)
      return coroutine.create(function()
        for _, w in ipairs(waits) do
          log[#log + 1] = name .. "@" .. (ft.t - 1000)
          coroutine.yield(w)
        end
        log[#log + 1] = name .. " ends @" .. (ft.t - 1000)
      end)
    end
    local a, b = worker("a", { 3, 3 }), worker("b", { 2, 5 })
    local done = ibkr.run({ a, b }, { clock = ft.clock, sleep = function(x)
      sleeps[#sleeps + 1] = x
      ft.t = ft.t + x
    end })
    assert.is_true(done)
    assert.same({ "a@0", "b@0", "b@2", "a@3", "a ends @6", "b ends @7" }, log)
    assert.same({ 2, 1, 3, 1 }, sleeps)
  end)

  it("returns false when the duration passes first; the coroutines can be driven again", function()
    local ft = fake_time()
    local n = 0
    local co = coroutine.create(function() while true do n = n + 1; coroutine.yield(10) end end)
    assert.is_false(ibkr.run(co, { duration = 25, clock = ft.clock, sleep = ft.sleep }))
    assert.equal(3, n)
    assert.equal(1025, ft.t)
    assert.equal("suspended", coroutine.status(co))
    assert.is_false(ibkr.run(co, { duration = 6, clock = ft.clock, sleep = ft.sleep }))
    assert.equal(4, n) -- the one due at 30
    assert.equal(1031, ft.t)
  end)

  it("raises what a coroutine raises", function()
    local co = coroutine.create(function() error("bad") end)
    assert.has_error(function() ibkr.run(co, { sleep = function() end }) end, "bad")
  end)
end)
