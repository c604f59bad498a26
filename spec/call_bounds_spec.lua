-- Per-call `timeout` and `deadline` on every session call, blocking and cooperative: the call's
-- own bounds replace the session's for that call (longer ones too), retries and waits included;
-- bad values raise at the caller's line, as the session's options do. Against the mock gateway,
-- whose delay fault holds answers back; bounds are checked with wide margins (a bound of a
-- fraction of a second against answers held for 30 s), never by timing alone.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")

local SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1

-- Runs f(s) inside a coroutine driven like a host loop (sleeping what it yields) when `coop`,
-- else directly. Returns the seconds it took, then what f returned; `yields` is how many times
-- it yielded.
local yields
local function call_in(coop, f)
  local t0 = core.monotonic()
  yields = 0
  if not coop then
    local r = table.pack(f())
    return core.monotonic() - t0, table.unpack(r, 1, r.n)
  end
  local co = coroutine.create(f)
  while true do
    local r = table.pack(coroutine.resume(co))
    assert(r[1], r[2])
    if coroutine.status(co) == "dead" then
      return core.monotonic() - t0, table.unpack(r, 2, r.n)
    end
    yields = yields + 1
    core.sleep(math.min(type(r[2]) == "number" and r[2] or 0.01, 0.05))
  end
end

-- every session call, with its per-call options table `o` (not tail calls: the caller's line is
-- the line of each function here)
local CALLS = {
  auth_status = function(s, o) local a, b = s:auth_status(o); return a, b end,
  tickle = function(s, o) local a, b = s:tickle(o); return a, b end,
  sso_validate = function(s, o) local a, b = s:sso_validate(o); return a, b end,
  validate = function(s, o) local a, b = s:validate(o); return a, b end,
  logout = function(s, o) local a, b = s:logout(o); return a, b end,
  reauthenticate = function(s, o) local a, b = s:reauthenticate(o); return a, b end,
  init_brokerage = function(s, o) local a, b = s:init_brokerage(o); return a, b end,
  request = function(s, o) local a, b = s:request("GET", "/iserver/accounts", o); return a, b end,
  health = function(s, o) local a, b = s:health(o); return a, b end,
  is_ready = function(s, o) local a = s:is_ready(o); return a end,
  wait_ready = function(s, o) local a, b = s:wait_ready(o); return a, b end,
}
local PATHS = {
  auth_status = "/iserver/auth/status", tickle = "/tickle", sso_validate = "/sso/validate",
  validate = "/sso/validate", logout = "/logout", reauthenticate = "/iserver/reauthenticate",
  init_brokerage = "/iserver/auth/ssodh/init", request = "/iserver/accounts",
  health = "/iserver/auth/status", is_ready = "/iserver/auth/status",
}

describe("per-call timeout and deadline", function()
  local m
  setup(function() m = assert(mock.start{ tls = false, pacing = false, init_delay = 0 }) end)
  teardown(function() m:stop() end)
  before_each(function() m:reset() end)

  for _, coop in ipairs{ false, true } do
    local how = coop and "cooperative" or "blocking"

    it(how .. ": a call's deadline bounds it whatever the session allows, on every call", function()
      for name, f in pairs(CALLS) do
        if PATHS[name] then
          m:reset()
          m:fault{ path = PATHS[name], kind = "delay", seconds = 30, count = 100 }
          -- the session would wait 60 s per exchange and 120 s per call
          local s = m:session{ timeout = 60, deadline = 120, retries = 2, cooperative = coop }
          local took, res, err = call_in(coop, function() return f(s, { deadline = 0.3 }) end)
          if name == "health" then
            assert.equal("down", res, name) -- and err is its detail
          elseif name == "is_ready" then
            assert.is_false(res, name)
          else
            assert.is_nil(res, name)
          end
          if name ~= "is_ready" then assert.equal("timeout", err.kind, name) end
          assert.is_true(took < 10 * SCALE, name .. " took " .. took .. " s against a 0.3 s deadline")
          s:close()
        end
      end
    end)

    it(how .. ": a call's deadline longer than the session's is honoured", function()
      m:fault{ path = "/tickle", kind = "delay", seconds = 1, count = 2 }
      local s = m:session{ timeout = 0.2, deadline = 0.3, retries = 0, cooperative = coop }
      local _, res, err = call_in(coop, function() return s:tickle() end)
      assert.is_nil(res) -- the session's own bounds: cut after 0.3 s at most
      assert.equal("timeout", err.kind)
      local _, res2, meta = call_in(coop, function() return s:tickle{ timeout = 20, deadline = 30 } end)
      assert.is_table(res2, tostring(meta))
      assert.equal(200, meta.status)
      if coop then assert.is_true(yields > 0, "the cooperative call never yielded") end
      s:close()
    end)

    it(how .. ": a call's timeout bounds each exchange, and the call retries within its deadline", function()
      m:fault{ path = "/tickle", kind = "delay", seconds = 30, count = 1 } -- the first attempt only
      local s = m:session{ timeout = 60, retries = 2, cooperative = coop }
      local took, res, meta = call_in(coop, function() return s:tickle{ timeout = 0.3, deadline = 20 } end)
      assert.is_table(res, tostring(meta))
      assert.equal(2, #m:api_log("/tickle"))
      assert.equal(1, s:stats().retries)
      assert.is_true(took < 10 * SCALE, "took " .. took .. " s")
      s:close()
    end)

    it(how .. ": s:request's deadline cuts its retries short (a POST with retry = true)", function()
      m:fault{ path = "/iserver/accounts", kind = "status", status = 503, count = 100,
        headers = { ["Retry-After"] = "1" } }
      local s = m:session{ timeout = 10, deadline = 60, retries = 5, cooperative = coop }
      local _, res, err = call_in(coop, function()
        return s:request("POST", "/iserver/accounts", { retry = true, timeout = 5, deadline = 0.5 })
      end)
      assert.is_nil(res)
      assert.equal(503, err.status)
      assert.equal(1, #m:api_log("/iserver/accounts")) -- a retry after 1 s does not fit 0.5 s
      s:close()
    end)

    it(how .. ": a call's deadline bounds its pacing wait (shorter: refused at once, longer: waits)",
        function()
      local s = m:session{ pacing = true, cooperative = coop }
      assert(call_in(coop, function() return s:tickle() end))
      -- /tickle at most once a second: the next slot is ~1 s away
      local _, res, err = call_in(coop, function() return s:tickle{ deadline = 0.3 } end)
      assert.is_nil(res)
      assert.equal("rate_limited", err.kind)
      assert.equal(1, #m:api_log("/tickle"))
      local _, res2 = call_in(coop, function() return s:tickle{ deadline = 10 } end)
      assert.is_table(res2)
      assert.equal(2, #m:api_log("/tickle"))
      s:close()
    end)

    it(how .. ": wait_ready's deadline and timeout bound the whole wait; the smaller wins", function()
      m:set_state("unauthenticated")
      local s = m:session{ cooperative = coop }
      local took, res, err = call_in(coop, function()
        return s:wait_ready{ timeout = 60, deadline = 0.3, init = false }
      end)
      assert.is_nil(res)
      assert.equal("timeout", err.kind)
      assert.equal("unauthenticated", err.state)
      assert.is_true(took < 10 * SCALE, "took " .. took .. " s")
      took, res, err = call_in(coop, function()
        return s:wait_ready{ timeout = 0.3, deadline = 60, init = false }
      end)
      assert.is_nil(res)
      assert.equal("timeout", err.kind)
      assert.is_true(took < 10 * SCALE, "took " .. took .. " s")
      s:close()
    end)
  end

  it("a session without a deadline of its own gives a call its timeout + ibkr.DEADLINE_EXTRA", function()
    -- every attempt is held 30 s: the call ends when its deadline (0.2 + 0.3 s) is spent, after
    -- its first attempt timed out and it waited for a retry
    m:fault{ path = "/tickle", kind = "delay", seconds = 30, count = 100 }
    local extra = ibkr.DEADLINE_EXTRA
    ibkr.DEADLINE_EXTRA = 0.3 -- read at ibkr.new
    local ok, s = pcall(function() return m:session{ timeout = 60, retries = 5 } end)
    ibkr.DEADLINE_EXTRA = extra
    assert(ok, s)
    local t0 = core.monotonic()
    local res, err = s:tickle{ timeout = 0.2 }
    local took = core.monotonic() - t0
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    -- 0.5 s hold two attempts at most (the second starts after 0.2 + 0.125 s, a third would wait
    -- 0.25 s more); the session's 60 + 0.3 s would have let all six be made
    assert.is_true(#m:api_log("/tickle") <= 2, #m:api_log("/tickle") .. " attempts")
    assert.is_true(took < 10 * SCALE, "took " .. took .. " s")
    s:close()
  end)
end)

describe("per-call options are checked like the session's", function()
  local s
  setup(function() s = ibkr.new{ base_url = "http://127.0.0.1:1/v1/api", retries = 0 } end)
  teardown(function() s:close() end)

  local BAD = {
    { { timeout = 0 }, "option 'timeout' must be a finite number > 0 %(got 0%)" },
    { { timeout = -1 }, "option 'timeout' must be a finite number > 0" },
    { { deadline = 0 / 0 }, "option 'deadline' must be a finite number > 0" },
    { { deadline = math.huge }, "option 'deadline' must be a finite number > 0" },
    { { deadline = "2" }, "option 'deadline' must be a finite number > 0 %(got string%)" },
    { { deadlin = 2 }, "unknown option 'deadlin' %(did you mean 'deadline'%?%)" },
    { { timout = 2 }, "unknown option 'timout' %(did you mean 'timeout'%?%)" },
    { "2", "options must be a table" },
  }

  for name, f in pairs(CALLS) do
    it("s:" .. name .. " raises at the caller's line, naming the call", function()
      for _, case in ipairs(BAD) do
        local opts, want = case[1], case[2]
        if name == "wait_ready" and type(opts) == "table" and opts.timeout then
          if opts.timeout == 0 then -- wait_ready's own timeout may be 0 (look once); its deadline may not
            opts, want = { deadline = 0 }, "option 'deadline' must be a finite number > 0 %(got 0%)"
          else
            want = "option 'timeout' must be a finite number >= 0"
          end
        end
        local line = debug.getinfo(f, "S").linedefined
        local ok, err = pcall(f, s, opts)
        assert.is_false(ok, name .. " accepted " .. want)
        assert.matches("call_bounds_spec%.lua:" .. line .. ": ", err)
        assert.matches(want, err)
        local shown = name == "validate" and "sso_validate" or name
        assert.truthy(err:find("s:" .. shown .. ": ", 1, true), err)
      end
    end)
  end

  it("init_brokerage and request take theirs beside their own options", function()
    assert.has_error(function() s:init_brokerage{ compete = false, deadline = -2 } end)
    assert.has_error(function() s:request("GET", "/x", { query = { a = 1 }, timeout = 0 }) end)
    local ok, err = pcall(s.init_brokerage, s, { compet = true })
    assert.is_false(ok)
    assert.matches("did you mean 'compete'", err)
  end)

  it("wait_ready still takes timeout = 0 (one look)", function()
    local res, err = s:wait_ready{ timeout = 0, init = false }
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
  end)
end)
