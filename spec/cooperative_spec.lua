-- Never blocking the host: cooperative calls and the keep-alive yield while a request is in
-- flight, and one resume stays under 1 ms even when the gateway takes seconds to answer.
-- Real time here: the mock delays its answers, and the drivers below are host loops.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")

local STEP = 0.0100001

-- Drives `co` like a host loop (sleeping what it asks) until it returns or yields a wait of at
-- least `until_wait`. Returns a record {wall =, n =} (the longest single resume, the number of
-- resumes) and the values the coroutine returned (when it ended).
local function drive(co, until_wait, limit)
  local rec = { wall = 0, n = 0 }
  local deadline = core.monotonic() + (limit or 10)
  while core.monotonic() < deadline do
    local t0 = core.monotonic()
    local res = table.pack(coroutine.resume(co))
    local d = core.monotonic() - t0
    rec.n = rec.n + 1
    if d > rec.wall then rec.wall = d end
    assert(res[1], res[2])
    if coroutine.status(co) == "dead" then return rec, table.unpack(res, 2, res.n) end
    local wait = res[2]
    assert.equal("number", type(wait))
    if until_wait and wait >= until_wait then return rec end
    core.sleep(math.min(wait, 0.05))
  end
  error("coroutine did not finish in time")
end

-- The machine runs other processes (other suites, the mock itself): the OS may take the CPU away
-- in the middle of a resume. A resume that really blocks or costs over 1 ms does so on every run;
-- preemption does not. So a measurement is repeated up to 3 times and the best run must pass.
-- Sanitizer builds (make asan) run instrumented code several times slower: they set
-- IBKR_TIME_SCALE so the bound keeps its meaning there; a plain build is held to 1 ms.
local LIMIT = 0.001 * (tonumber(os.getenv("IBKR_TIME_SCALE")) or 1)

local function best_of_3(measure)
  local runs = {}
  for i = 1, 3 do
    runs[i] = measure()
    if runs[i].wall < LIMIT then return runs[i], runs end
  end
  return runs[3], runs
end

local function assert_fast(rec, runs)
  local figures = {}
  for i, r in ipairs(runs or { rec }) do figures[i] = string.format("%.3f ms", r.wall * 1000) end
  assert.is_true(rec.wall < LIMIT, "longest resume per run: " .. table.concat(figures, ", "))
end

local function ms(x) return string.format("%.3f ms", x * 1000) end

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
    local rec, runs = best_of_3(function()
      m:fault{ path = "/iserver/auth/status", kind = "delay", seconds = 0.3 }
      local co = coroutine.create(function() return s:auth_status() end)
      local r, res = drive(co)
      assert.is_true(res.authenticated)
      assert.is_true(r.n > 10, "only " .. r.n .. " resumes")
      return r
    end)
    assert_fast(rec, runs)
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
    local s = ibkr.new{ base_url = m.url, cooperative = true,
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
        if w > STEP then waits[#waits + 1] = w end
        core.sleep(w)
      end
    end
    assert.is_true(#waits >= 2)
    assert.is_true(waits[1] > 0.9 and waits[1] <= 1 + require("ibkr.pacing").MARGIN, "pacing wait "
      .. tostring(waits[1]))
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
    m:fault{ path = "/iserver/auth/status", kind = "delay", seconds = 2 }
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
    m:fault{ path = "/iserver/auth/status", kind = "delay", seconds = 2 }
    local co = coroutine.create(function() return s:auth_status() end)
    coroutine.resume(co)
    local before = open_fds() -- the request in flight holds its completion fd
    assert.is_true(coroutine.close(co))
    assert.is_true(open_fds() < before, "the request was not freed")
    local t0 = core.monotonic()
    assert(s:tickle())
    assert.is_true(core.monotonic() - t0 < 1)
    s:close()
  end)
end)

describe("helpers in cooperative mode", function()
  it("wait_ready yields its polls and the re-initialisation", function()
    local m = assert(mock.start{ tls = false, pacing = false, state = "unauthenticated", init_delay = 0.3 })
    local s = ibkr.new{ base_url = m.url, cooperative = true,
      sleep = function() error("must not sleep in cooperative mode") end }
    local co = coroutine.create(function() return s:wait_ready{ timeout = 20 } end)
    local rec, st = drive(co, nil, 20)
    assert.is_true(st.authenticated)
    assert.is_true(rec.n > 2)
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
    local t0 = core.monotonic()
    assert.is_false(ibkr.run({ ka(s1, "a"), ka(s2, "b") }, { duration = 2.5 }))
    assert.is_true(core.monotonic() - t0 >= 2.5)
    assert.same({ a = "ready", b = "ready" }, seen)
    local function tickles(m)
      local n = 0
      for _, e in ipairs(m:log()) do if e.api == "/tickle" then n = n + 1 end end
      return n
    end
    assert.equal(3, tickles(m1)) -- at 0, 1 and 2 s
    assert.equal(3, tickles(m2))
    s1:close(); s2:close()
    m1:stop(); m2:stop()
  end)
end)

describe("the keep-alive's longest resume", function()
  local function measure(tls, warm)
    local m = assert(mock.start{ tls = tls, pacing = false })
    local s = ibkr.new{ base_url = m.url }
    if warm then assert(s:auth_status()) end -- connection (and TLS session) established first
    m:fault{ path = "/tickle", kind = "delay", seconds = 2 }
    local t0 = core.monotonic()
    local rec = drive(s:keepalive{ interval = 60 }, 1, 10)
    local elapsed = core.monotonic() - t0
    s:close()
    m:stop()
    assert.is_true(elapsed >= 2, "the tickle was not delayed")
    return rec
  end

  local function report(what, rec, runs)
    local figures = {}
    for i, r in ipairs(runs) do figures[i] = ms(r.wall) end
    print(string.format("\n[keep-alive] %s: longest resume %s over %d resumes (runs: %s)",
      what, ms(rec.wall), rec.n, table.concat(figures, ", ")))
  end

  it("stays under 1 ms while the mock delays tickle by 2 s (HTTP, connect included)", function()
    local rec, runs = best_of_3(function() return measure(false, false) end)
    report("HTTP, tickle delayed 2 s, connect included", rec, runs)
    assert_fast(rec, runs)
  end)

  it("stays under 1 ms while the mock delays tickle by 2 s (HTTPS, TLS handshake included)", function()
    local rec, runs = best_of_3(function() return measure(true, false) end)
    report("HTTPS, tickle delayed 2 s, TLS handshake included", rec, runs)
    assert_fast(rec, runs)
  end)

  it("stays under 1 ms while the mock delays tickle by 2 s (HTTPS, established connection)", function()
    local rec, runs = best_of_3(function() return measure(true, true) end)
    report("HTTPS, tickle delayed 2 s, warm connection", rec, runs)
    assert_fast(rec, runs)
  end)
end)
