-- One session, many callers (issue 10): a keep-alive, calls from the main chunk, a coroutine whose
-- calls block and a cooperative coroutine share one ibkr session while the gateway is slow to
-- answer /tickle; no call fails and none waits for another's exchange.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")

-- sanitizer builds run slower (make asan sets 5): delays and bounds grow together
local SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1

for _, tls in ipairs{ false, true } do
  describe("one session, many callers over " .. (tls and "HTTPS" or "HTTP"), function()
    local m
    setup(function() m = assert(mock.start{ tls = tls, pacing = false }) end)
    teardown(function() if m then m:stop() end end)
    before_each(function() m:reset() end)

    it("a keep-alive, the main chunk, a blocking and a cooperative coroutine: no call fails", function()
      m:fault{ path = "/tickle", kind = "delay", seconds = 0.3 * SCALE, count = 1000 }
      local s = ibkr.new{ base_url = m.url, cooperative = true, pacing = false, retries = 0 }
      local errors, done = {}, { main = 0, blocking = 0, coop = 0, keepalive = 0 }
      local function check(who, res, err)
        if res == nil then errors[#errors + 1] = who .. ": " .. tostring(err)
        else done[who] = done[who] + 1 end
      end
      local ka = s:keepalive{ interval = 0.05, retry_interval = 0.05,
        on_state = function(new) if new == "ready" then done.keepalive = done.keepalive + 1 end end,
        on_error = function(e) errors[#errors + 1] = "keep-alive: " .. tostring(e) end }
      -- a call made inside a C callback cannot yield: it blocks, inside the coroutine
      local blocking = coroutine.create(function()
        for _ = 1, 4 do
          string.gsub("x", "x", function() check("blocking", s:auth_status()) end)
          coroutine.yield(0.02)
        end
      end)
      local coop = coroutine.create(function()
        for _ = 1, 3 do
          check("coop", s:tickle())
          check("coop", s:request("GET", "/sso/validate"))
        end
      end)
      for _ = 1, 4 do
        ibkr.run({ ka, blocking, coop }, { duration = 0.1 })
        local t0 = core.monotonic()
        check("main", s:auth_status())
        -- the main chunk's call does not wait for the slow tickles in flight
        assert.is_true(core.monotonic() - t0 < 0.25 * SCALE, "a blocking call waited for another exchange")
      end
      -- the keep-alive keeps running while the workers finish, until it has seen a tickle through
      while coroutine.status(blocking) ~= "dead" or coroutine.status(coop) ~= "dead" or done.keepalive == 0 do
        ibkr.run({ ka, blocking, coop }, { duration = 0.1 })
      end
      s:stop()
      ibkr.run(ka)
      assert.are.same({}, errors)
      assert.are.same({ main = 4, blocking = 4, coop = 6, keepalive = 1 }, done)
      assert.are.equal(0, s:stats().failures)
      s:close()
    end)

    it("several cooperative coroutines run their requests side by side", function()
      m:fault{ path = "/iserver/auth/status", kind = "delay", seconds = 0.4 * SCALE, count = 4 }
      local s = ibkr.new{ base_url = m.url, cooperative = true, pacing = false, retries = 0 }
      local cos, got = {}, 0
      for i = 1, 4 do
        cos[i] = coroutine.create(function()
          if assert(s:auth_status()).authenticated then got = got + 1 end
        end)
      end
      local t0 = core.monotonic()
      assert.is_true(ibkr.run(cos))
      assert.are.equal(4, got)
      -- one after the other would take 1.6 s
      assert.is_true(core.monotonic() - t0 < 1.2 * SCALE, "the requests ran one after the other")
      s:close()
    end)
  end)
end
