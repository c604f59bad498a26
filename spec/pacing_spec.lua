-- Pacing and backoff arithmetic: pure functions on given times, no clock, no network.
local pacing = require("ibkr.pacing")
local retry = require("ibkr.retry")
local GAP = pacing.MARGIN -- every spacing is the limit plus this margin (arrival jitter)

describe("pacer", function()
  it("lets the first request of each kind go at once", function()
    local p = pacing.new()
    assert.equal(0, p:reserve("/tickle", 100))
    assert.equal(0, p:reserve("/sso/validate", 100))
    assert.equal(0, p:reserve("/iserver/auth/status", 100))
  end)

  it("spaces tickles one second (and the margin) apart, waiting when the wait is short", function()
    local p = pacing.new()
    assert.is_true(GAP > 0 and GAP <= 0.1)
    assert.equal(0, p:reserve("/tickle", 10))
    assert.near(0.7 + GAP, p:reserve("/tickle", 10.3), 1e-9)       -- booked for 11.0 + GAP
    assert.near(1.0 + GAP, p:reserve("/tickle", 11.0 + GAP), 1e-9) -- next at 12.0 + 2 GAP
    assert.equal(0, p:reserve("/tickle", 13.5))
  end)

  it("counts a path's limit from its answer when that came after the booked send", function()
    local p = pacing.new()
    assert.equal(0, p:reserve("/tickle", 10))
    p:answered("/tickle", 10.4)                                 -- a connection's first request: late
    assert.near(0.9 + GAP, p:reserve("/tickle", 10.5), 1e-9)    -- at 11.4 + GAP, not 11.0 + GAP
    p:answered("/tickle", 11.46)
    assert.near(0.46 + GAP, p:reserve("/tickle", 12.0), 1e-9)   -- at 12.46 + GAP
    assert.equal(0, p:reserve("/tickle", 14))
    p:answered("/tickle", 13.9)                                 -- an earlier answer: the booking stays
    assert.near(0.8 + GAP, p:reserve("/tickle", 14.2), 1e-9)    -- at 15.0 + GAP
    assert.near(14.9 + GAP, p:floor("/tickle"), 1e-9)          -- the latest answer (13.9) + the limit
    p:answered("/iserver/auth/status", 20)                      -- no limit of its own: nothing
    assert.is_nil(p:floor("/iserver/auth/status"))
    assert.equal(0, p:reserve("/iserver/auth/status", 15.5))
    p:answered("/sso/validate?x=1", 5)                          -- the query ignored
    local wait, again = p:reserve("/sso/validate", 6)
    assert.is_nil(wait)
    assert.near(59 + GAP, again, 1e-9)
  end)

  it("gives a request booked while an earlier one was in flight the floor of that one's answer", function()
    local p = pacing.new()
    assert.equal(0, p:reserve("/tickle", 0))                -- A: sent at 0
    assert.near(0.9 + GAP, p:reserve("/tickle", 0.1), 1e-9) -- B: booked from A's send, at 1.0 + GAP
    p:answered("/tickle", 0.5)                              -- A arrived late: answered at 0.5
    assert.near(1.5 + GAP, p:floor("/tickle"), 1e-9)        -- B goes at 1.5 + GAP (call.lua's admit)
  end)

  it("refuses a tickle whose wait would exceed 1.5 s, booking nothing", function()
    local p = pacing.new()
    p:reserve("/tickle", 0)
    p:reserve("/tickle", 0)          -- booked for 1.0 + GAP
    local wait, again = p:reserve("/tickle", 0)
    assert.is_nil(wait)
    assert.near(2.0 + 2 * GAP, again, 1e-9)
    -- nothing was booked by the refusal: at t = 0.6 the next tickle is at 2.0 + 2 GAP
    assert.near(1.4 + 2 * GAP, p:reserve("/tickle", 0.6), 1e-9)
  end)

  it("allows one /sso/validate per minute and ignores the query string", function()
    local p = pacing.new()
    assert.equal(0, p:reserve("/sso/validate", 0))
    local wait, again = p:reserve("/sso/validate?x=1", 30)
    assert.is_nil(wait)
    assert.near(30 + GAP, again, 1e-9)
    assert.near(1.5, p:reserve("/sso/validate", 58.5 + GAP), 1e-9)  -- the next one at 60 + GAP
  end)

  it("keeps every one-second window at ten requests or fewer", function()
    local p = pacing.new()
    for i = 1, 10 do assert.equal(0, p:reserve("/x" .. i, 5)) end
    assert.near(1 + GAP, p:reserve("/y", 5), 1e-9)      -- the 11th waits for the window to slide
    assert.near(0.5 + GAP, p:reserve("/z", 5.5), 1e-9)  -- the window after 5.0 is full: 6.0 + GAP too
  end)

  it("never books eleven sends within one second (randomised)", function()
    local p = pacing.new()
    local sends, t = {}, 0
    math.randomseed(42)
    for _ = 1, 500 do
      t = t + math.random() * 0.05
      local path = ({ "/tickle", "/a", "/b", "/sso/validate" })[math.random(4)]
      local wait = p:reserve(path, t)
      if wait then sends[#sends + 1] = t + wait end
    end
    table.sort(sends)
    for i = 1, #sends - 10 do
      assert.is_true(sends[i + 10] - sends[i] >= 1 + GAP - 1e-9, "11 sends within a second at " .. sends[i])
    end
    assert.is_true(#sends > 100)
  end)

  it("counts bookings from concurrent callers (a later caller sees earlier reservations)", function()
    local p = pacing.new()
    assert.equal(0, p:reserve("/tickle", 0))
    assert.near(1 + GAP, p:reserve("/tickle", 0.0), 1e-9)
    -- both reservations count towards the global window: 1 + 9 sends at t = 0 fill it
    for _ = 1, 9 do assert.equal(0, p:reserve("/a", 0)) end
    assert.near(1 + GAP, p:reserve("/b", 0), 1e-9)
  end)
end)

describe("backoff", function()
  local function fixed(x) return function() return x end end

  it("doubles each step, with jitter in the upper half of the step", function()
    assert.near(0.125, retry.delay(1, nil, fixed(0)), 1e-12)
    assert.near(0.25, retry.delay(1, nil, fixed(1)), 1e-12)
    assert.near(0.25, retry.delay(2, nil, fixed(0)), 1e-12)
    assert.near(1.0, retry.delay(3, nil, fixed(1)), 1e-12)
  end)

  it("is capped", function()
    assert.near(retry.CAP, retry.delay(30, nil, fixed(1)), 1e-12)
    assert.near(retry.CAP / 2, retry.delay(30, nil, fixed(0)), 1e-12)
  end)

  it("never waits less than Retry-After, and gives up on a long one", function()
    assert.equal(3, retry.delay(1, 3, fixed(0.5)))
    assert.near(0.1875, retry.delay(1, 0, fixed(0.5)), 1e-12)
    assert.equal(600, retry.delay(1, 600, fixed(0.5))) -- whether it fits is the call's deadline's business
  end)

  it("retries connect, timeout, 429 and 503 only", function()
    assert.is_true(retry.retryable{ kind = "connect" })
    assert.is_true(retry.retryable{ kind = "timeout" })
    assert.is_true(retry.retryable{ kind = "http", status = 429 })
    assert.is_true(retry.retryable{ kind = "http", status = 503 })
    assert.is_false(retry.retryable{ kind = "http", status = 500 })
    assert.is_false(retry.retryable{ kind = "http", status = 401 })
    assert.is_false(retry.retryable{ kind = "tls" })
    assert.is_false(retry.retryable{ kind = "json" })
    assert.is_false(retry.retryable{ kind = "protocol" })
  end)
end)
