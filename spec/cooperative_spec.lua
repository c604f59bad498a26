-- Never blocking the host: cooperative calls and the keep-alive yield while a request is in
-- flight, whatever the gateway does. The specs prove it by events: the mock holds the answer back
-- (a "hold" fault), or is stopped (SIGSTOP) before the connection is even made, and every resume
-- must come back while it does. (How long one resume takes is a figure of make bench:
-- bench/stall.lua, the 1 ms target.) The drivers below are host loops on the real clock.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")
local raw = require("spec.helpers.raw")

local STEP = 0.0100001

-- Drives `co` like a host loop (sleeping what it asks) until it returns or yields a wait of at
-- least `until_wait`. each(n, wait), if given, runs after every resume that left co suspended.
-- Returns the number of resumes and the values the coroutine returned (when it ended).
local function drive(co, until_wait, limit, each)
  local n = 0
  local deadline = core.monotonic() + (limit or 10)
  while core.monotonic() < deadline do
    local res = table.pack(coroutine.resume(co))
    n = n + 1
    assert(res[1], res[2])
    if coroutine.status(co) == "dead" then return n, table.unpack(res, 2, res.n) end
    local wait = res[2]
    assert.equal("number", type(wait))
    if each then each(n, wait) end
    if until_wait and wait >= until_wait then return n end
    core.sleep(math.min(wait, 0.05))
  end
  error("coroutine did not finish in time")
end

-- each() for drive: counts the resumes that came back while the mock held an answer, and
-- releases it after `want` of them. held() -> that count.
local function release_after(m, want)
  local count = 0
  return function(_, wait)
    if count < want and #m:held() > 0 then
      assert.is_true(wait <= STEP, "yielded " .. wait .. " s with a request in flight")
      count = count + 1
      if count == want then m:release() end
    end
  end, function() return count end
end

-- how many descriptors this process has open (/proc)
local function open_fds()
  local pid = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
  local p = io.popen("ls /proc/" .. pid .. "/fd | wc -l")
  local n = tonumber(p:read("a"))
  p:close()
  return n
end

describe("cooperative calls", function()
  local m
  setup(function() m = assert(mock.start{ tls = false, pacing = false }) end)
  teardown(function() m:stop() end)
  before_each(function() m:reset(); m:clear_faults() end)

  it("yield seconds while the request is in flight and return its result", function()
    local s = ibkr.new{ base_url = m.url, cooperative = true }
    m:fault{ path = "/iserver/auth/status", kind = "hold" }
    local co = coroutine.create(function() return s:auth_status() end)
    local each, held = release_after(m, 10)
    local _, res = drive(co, nil, nil, each)
    assert.is_true(res.authenticated)
    assert.equal(10, held()) -- 10 resumes came back while the answer was held
    -- outside a coroutine the same session blocks
    assert.is_true(assert(s:tickle()).iserver ~= nil)
    s:close()
  end)

  it("block inside a coroutine when the session is not cooperative", function()
    local s = ibkr.new{ base_url = m.url }
    local co = coroutine.create(function() return s:auth_status() end)
    local ok, res = coroutine.resume(co)
    assert.is_true(ok)
    assert.equal("dead", coroutine.status(co))
    assert.is_true(res.authenticated)
    s:close()
  end)

  it("yield pacing and backoff waits instead of sleeping", function()
    -- the session's clock moves by the waits it yields only (a request in flight takes no time)
    local now = 1000
    local s = ibkr.new{ base_url = m.url, cooperative = true, clock = function() return now end,
      sleep = function() error("must not sleep in cooperative mode") end }
    m:fault{ path = "/iserver/auth/status", kind = "status", status = 503 }
    local co = coroutine.create(function()
      assert(s:tickle())
      assert(s:tickle())          -- paced: waits ~1 s, by yielding
      return s:auth_status()      -- one 503, retried after a yielded backoff
    end)
    local waits = {}
    while coroutine.status(co) ~= "dead" do
      local ok, w = coroutine.resume(co)
      assert(ok, w)
      if coroutine.status(co) ~= "dead" then
        assert.equal("number", type(w))
        if w > STEP then
          waits[#waits + 1] = w
          now = now + w
        else
          core.sleep(w)
        end
      end
    end
    assert.is_true(#waits >= 2)
    assert.near(1 + require("ibkr.pacing").MARGIN, waits[1], 1e-9, "pacing wait " .. tostring(waits[1]))
    assert.is_true(waits[2] >= 0.125 and waits[2] <= 0.25, "backoff " .. tostring(waits[2]))
    s:close()
  end)

  it("share one session between coroutines: the second waits its turn", function()
    local s = ibkr.new{ base_url = m.url, cooperative = true }
    m:fault{ path = "/iserver/auth/status", kind = "delay", seconds = 0.2 }
    local results = {}
    local function worker(i) return coroutine.create(function() results[i] = s:auth_status() end) end
    assert.is_true(ibkr.run({ worker(1), worker(2) }, { duration = 5 }))
    assert.is_true(results[1].authenticated)
    assert.is_true(results[2].authenticated)
    s:close()
  end)

  it("end with kind 'closed' when the session is closed mid-request", function()
    local s = ibkr.new{ base_url = m.url, cooperative = true }
    m:fault{ path = "/iserver/auth/status", kind = "hold" }
    local co = coroutine.create(function() return s:auth_status() end)
    local ok, wait = coroutine.resume(co)
    assert.is_true(ok and wait <= STEP)
    s:close()
    local ok2, res, err = coroutine.resume(co)
    assert.is_true(ok2)
    assert.is_nil(res)
    assert.equal("closed", err.kind)
  end)

  it("free the request when the coroutine is closed", function()
    local s = ibkr.new{ base_url = m.url, cooperative = true }
    m:fault{ path = "/iserver/auth/status", kind = "hold" }
    local co = coroutine.create(function() return s:auth_status() end)
    coroutine.resume(co)
    local before = open_fds() -- the request in flight holds its completion fd
    assert.is_true(coroutine.close(co))
    assert.is_true(open_fds() < before, "the request was not freed")
    assert(s:tickle())
    assert.are.equal(1, #m:held(), "the next call waited for the abandoned request")
    s:close()
  end)
end)

describe("helpers in cooperative mode", function()
  it("wait_ready yields its polls and the re-initialisation", function()
    local m = assert(mock.start{ tls = false, pacing = false, state = "unauthenticated", init_delay = 0.3 })
    local s = ibkr.new{ base_url = m.url, cooperative = true,
      sleep = function() error("must not sleep in cooperative mode") end }
    local co = coroutine.create(function() return s:wait_ready{ timeout = 20 } end)
    local n, st = drive(co, nil, 20)
    assert.is_true(st.authenticated)
    assert.is_true(n > 2)
    s:close()
    m:stop()
  end)
end)

describe("ibkr.run with several gateways", function()
  it("keeps two sessions on two gateways alive from one driver", function()
    local m1 = assert(mock.start{ tls = true, pacing = false })
    local m2 = assert(mock.start{ tls = false, pacing = false })
    local s1, s2 = ibkr.new{ base_url = m1.url }, ibkr.new{ base_url = m2.url }
    local seen = {}
    local function ka(s, name)
      return s:keepalive{ interval = 1, on_state = function(new) seen[name] = new end }
    end
    local cos = { ka(s1, "a"), ka(s2, "b") }
    -- driven half a second at a time until each gateway has seen three tickles (0, 1 and 2 s)
    local give_up = core.monotonic() + 30
    while #m1:api_log("/tickle") < 3 or #m2:api_log("/tickle") < 3 do
      assert.is_true(core.monotonic() < give_up, "the keep-alives stopped tickling")
      assert.is_false(ibkr.run(cos, { duration = 0.5 }))
    end
    assert.same({ a = "ready", b = "ready" }, seen)
    s1:close(); s2:close()
    m1:stop(); m2:stop()
  end)
end)

describe("the keep-alive never blocks its host", function()
  -- Stops the mock (SIGSTOP) before the keep-alive's first resume: connecting, the TLS handshake
  -- and sending cannot finish while it is stopped; 20 resumes must come back then, each asking to
  -- be resumed soon. Then, with the mock running again, 20 more while it holds the tickle's answer.
  local function never_blocks(tls, warm)
    local m = assert(mock.start{ tls = tls, pacing = false })
    local s = ibkr.new{ base_url = m.url }
    if warm then assert(s:auth_status()) end -- connection (and TLS session) established first
    m:fault{ path = "/tickle", kind = "hold" }
    local co = s:keepalive{ interval = 60 }
    raw.freeze(m.pid)
    local ok, err = pcall(drive, co, nil, 30, function(n, wait)
      assert.is_true(wait <= STEP, "yielded " .. wait .. " s with the tickle in flight")
      if n == 20 then error("twenty", 0) end
    end)
    raw.thaw(m.pid)
    assert.are.same({ false, "twenty" }, { ok, err })
    local each, held = release_after(m, 20)
    assert.is_true(drive(co, 1, 30, each) > 20) -- until it asks for its interval: tickle done
    assert.equal(20, held())
    assert.equal(1, #m:api_log("/tickle"))
    s:close()
    m:stop()
  end

  it("while the mock is stopped and then holds the tickle (HTTP, connect included)", function()
    never_blocks(false, false)
  end)

  it("while the mock is stopped and then holds the tickle (HTTPS, TLS handshake included)", function()
    never_blocks(true, false)
  end)

  it("while the mock holds the tickle (HTTPS, established connection)", function()
    never_blocks(true, true)
  end)
end)
