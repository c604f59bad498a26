-- One session, many callers: a keep-alive, calls from the main chunk, a coroutine whose calls
-- block and a cooperative coroutine share one ibkr session while the gateway holds back its
-- answers to /tickle (a "hold" fault, released when the spec says); no call fails and none waits
-- for another's exchange.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")

for _, tls in ipairs{ false, true } do
  describe("one session, many callers over " .. (tls and "HTTPS" or "HTTP"), function()
    local m
    setup(function() m = assert(mock.start{ tls = tls, pacing = false }) end)
    teardown(function() if m then m:stop() end end)
    before_each(function() m:reset() end)

    it("a keep-alive, the main chunk, a blocking and a cooperative coroutine: no call fails", function()
      m:fault{ path = "/tickle", kind = "hold", count = 1000 }
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
        assert.is_true(m:await_held(1)) -- a tickle is in flight, its answer held back
        check("main", s:auth_status())
        -- the main chunk's call did not wait for the tickles in flight
        assert.is_true(#m:held() >= 1, "a blocking call waited for another exchange")
      end
      m:clear_faults()
      m:release()
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
      m:fault{ path = "/iserver/auth/status", kind = "hold", count = 4 }
      local s = ibkr.new{ base_url = m.url, cooperative = true, pacing = false, retries = 0 }
      local cos, got = {}, 0
      for i = 1, 4 do
        cos[i] = coroutine.create(function()
          if assert(s:auth_status()).authenticated then got = got + 1 end
        end)
      end
      -- all four in flight at once: the mock holds four answers (one after the other, it would
      -- never hold more than one)
      local give_up = core.monotonic() + 30
      while #m:held() < 4 do
        assert.is_true(core.monotonic() < give_up, "held: " .. #m:held() .. " of 4")
        assert.is_false(ibkr.run(cos, { duration = 0.05 }))
      end
      m:release()
      assert.is_true(ibkr.run(cos))
      assert.are.equal(4, got)
      s:close()
    end)
  end)
end
