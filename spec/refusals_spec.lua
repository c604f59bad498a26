-- When the gateway keeps refusing, the client backs off and never keeps itself in IBKR's penalty
-- box: a 429 without Retry-After holds the whole session for a growing time (60 s, doubling, at
-- most 600 s plus jitter); a streak of 5xx answers makes the keep-alive and wait_ready back off
-- (5 s, doubling, at most 120 s); a live session token refused again and again holds the token
-- requests (30 s from the second refusal, doubling, at most 600 s). Requests are counted on the
-- mock's side; long times pass on a fake clock (spec/helpers/clock.lua), never waited for.
local ibkr = require("ibkr")
local kinds = require("ibkr.kinds")
local mock = require("spec.helpers.mock")
local cli = require("spec.helpers.cli")
local fake_time = require("spec.helpers.clock").new
local ka = require("spec.helpers.keepalive")

local JIT = 1 + kinds.JITTER

-- Drives keep-alive rec.co on fake clock ft until `secs` fake seconds have passed.
local function drive_for(rec, ft, secs)
  local stop = ft.t + secs
  while ft.t < stop do assert(ka.turn(rec.co, ft, 1), "the keep-alive ended") end
end

-- The fake times at which errors of status `st` were reported, and the gaps between them.
local function times_of(rec, times, st)
  local t, gaps = {}, {}
  for i, e in ipairs(rec.errors) do
    if e.status == st then t[#t + 1] = times[i] end
  end
  for i = 2, #t do gaps[i - 1] = t[i] - t[i - 1] end
  return t, gaps
end

describe("a gateway that keeps refusing", function()
  local m, ft, s
  setup(function() m = assert(mock.start{ tls = false, pacing = false }) end)
  teardown(function() m:stop() end)
  before_each(function()
    m:reset()
    ft = fake_time()
    s = ibkr.new{ base_url = m.url, clock = ft.clock, sleep = ft.sleep }
  end)
  after_each(function() s:close() end)

  -- the keep-alive, recording the fake time of every error it reports
  local function keepalive(opts)
    local times = {}
    opts = opts or {}
    local rec
    opts.on_error = function(e)
      rec.errors[#rec.errors + 1] = e
      times[#rec.errors] = ft.t
    end
    rec = ka.start(s, opts)
    return rec, times
  end

  it("429 without Retry-After: the keep-alive holds for 60 s, doubling to 600 s, never seconds", function()
    m:fault{ kind = "status", status = 429, count = 1000000 }
    local rec, times = keepalive{ interval = 60, retry_interval = 5 }
    drive_for(rec, ft, 30)
    assert.equal(1, #m:log()) -- was 14 in 30 s: three per call, then every 5 s
    drive_for(rec, ft, 3600 - 30)
    local t, gaps = times_of(rec, times, 429)
    assert.equal(#t, #m:log()) -- every request it sent was one it reported
    for i, g in ipairs(gaps) do
      local step = math.min(600, 60 * 2 ^ (i - 1))
      assert.is_true(g >= step - 1e-6 and g <= step * JIT + 1e-6, "gap " .. i .. ": " .. g)
    end
    assert.is_true(#t >= 7 and #t <= 9, #t .. " requests in an hour")
    assert.equal("error", rec.last()) -- a 429 says nothing more about the session
  end)

  it("429 without Retry-After holds every call of the session; a good answer ends the streak", function()
    m:fault{ path = "/tickle", kind = "status", status = 429, count = 2 }
    local res, err = s:tickle()
    assert.is_nil(res)
    assert.equal(429, err.status)
    assert.is_true(err.hold >= 60 and err.hold <= 60 * JIT, "hold " .. tostring(err.hold))
    assert.matches("penalty box", err.hint)
    assert.equal(1, #m:api_log("/tickle")) -- not retried inside the call
    -- every call now, any endpoint, is held back without a request
    local r2, e2 = s:auth_status()
    assert.is_nil(r2)
    assert.equal("rate_limited", e2.kind)
    assert.equal("pacing", e2.held)
    assert.is_true(e2.retry_after > 59 and e2.retry_after <= 60 * JIT)
    assert.equal(0, #m:api_log("/iserver/auth/status"))
    assert.equal(1, #m:log())
    -- after the hold: the next 429 holds twice as long
    ft.t = ft.t + err.hold
    local _, e3 = s:tickle()
    assert.equal(429, e3.status)
    assert.is_true(e3.hold >= 120 and e3.hold <= 120 * JIT, "hold " .. tostring(e3.hold))
    ft.t = ft.t + e3.hold
    assert.truthy(s:tickle()) -- the fault is used up: answered, the streak ends
    m:fault{ path = "/tickle", kind = "status", status = 429, count = 1 }
    ft.t = ft.t + 2
    local _, e4 = s:tickle()
    assert.is_true(e4.hold >= 60 and e4.hold <= 60 * JIT, "hold " .. tostring(e4.hold))
  end)

  it("sustained 500s (the nightly reset): the keep-alive backs off 5 s, doubling to 120 s", function()
    m:fault{ kind = "status", status = 500, count = 1000000 }
    local rec, times = keepalive{ interval = 60, retry_interval = 5 }
    drive_for(rec, ft, 1200)
    local t, gaps = times_of(rec, times, 500)
    assert.equal(#t, #m:log())
    for i, g in ipairs(gaps) do
      local step = math.min(120, 5 * 2 ^ (i - 1))
      assert.is_true(g >= step - 1e-6 and g <= step * JIT + 1e-6, "gap " .. i .. ": " .. g)
    end
    assert.is_true(#t <= 16, #t .. " requests in 20 minutes (every 5 s would be 240)")
    -- the gateway recovers: seen at the next attempt, then the normal interval
    m:clear_faults()
    drive_for(rec, ft, 140)
    assert.equal("ready", rec.last())
    assert.equal(60, ka.turn(rec.co, ft))
  end)

  it("503 without Retry-After: retried inside a call, and calls back off across the keep-alive", function()
    m:fault{ path = "/tickle", kind = "status", status = 503, count = 1000000 }
    local rec, times = keepalive{ interval = 60, retry_interval = 5 }
    drive_for(rec, ft, 600)
    local t, gaps = times_of(rec, times, 503)
    assert.equal(3 * #t, #m:api_log("/tickle")) -- each call: the first try and its 2 retries
    for i, g in ipairs(gaps) do
      assert.is_true(g >= math.min(120, 5 * 2 ^ (i - 1)) - 1e-6, "gap " .. i .. ": " .. g)
    end
    assert.is_true(#t <= 10, #t .. " calls in 10 minutes")
  end)

  it("wait_ready polls a gateway answering 500 with growing pauses, not every second", function()
    m:fault{ path = "/iserver/auth/status", kind = "status", status = 500, count = 1000000 }
    local res, err = s:wait_ready{ timeout = 300, init = false }
    assert.is_nil(res)
    assert.equal("error", err.state)
    local n = #m:api_log("/iserver/auth/status")
    assert.is_true(n <= 10, n .. " polls in 300 s (one a second would be 300)")
  end)

  it("ibkr-session status sends one request to a gateway answering 429 without Retry-After", function()
    m:fault{ kind = "status", status = 429, count = 1000000 }
    local rc, out, err = cli.run{ "--url", m.url, "status" }
    assert.equal(1, rc)
    assert.matches("^error ", out)
    assert.matches("hint: the gateway refuses for pacing %(429, no Retry%-After%): every call of this "
      .. "session waits %d+ s", err)
    assert.equal(1, #m:log()) -- was 3 in 0.5 s
    local js
    rc, js = cli.run{ "--url", m.url, "--json", "tickle" }
    assert.equal(1, rc)
    assert.equal(2, #m:log())
    -- the hold, for a shell loop around the command (it lives in that process only)
    local e = require("cjson").decode(js).error
    local base = kinds.REFUSALS.pacing.base
    assert.is_true(e.hold >= base and e.hold <= base * JIT, e.hold)
    assert.equal(1, e.refusals)
  end)
end)

describe("the documented backoff", function()
  it("is the registry's, in docs/ibkr.md's table of answers", function()
    local f = assert(io.open("docs/ibkr.md"))
    local doc = f:read("a")
    f:close()
    for class, r in pairs(kinds.REFUSALS) do
      local row = string.format("%s s, doubling, at most %s s", r.base, r.cap)
      assert.truthy(doc:find(row, 1, true), class .. ": docs/ibkr.md lacks '" .. row .. "'")
    end
    assert.equal(60, kinds.backoff("pacing", 1, function() return 0 end))
    assert.equal(600, kinds.backoff("pacing", 9, function() return 0 end))
    assert.equal(0, kinds.backoff("token", 1, function() return 0 end))
    assert.equal(30, kinds.backoff("token", 2, function() return 0 end))
    assert.near(120 * JIT, kinds.backoff("server", 99, function() return 1 end), 1e-9)
  end)
end)
