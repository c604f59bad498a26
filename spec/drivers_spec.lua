-- The host drivers ibkr.luv and ibkr.cqueues, each on a real loop (luv's default loop, a cqueues
-- controller) against the mock gateway, next to a host timer of their own: the timer keeps
-- firing while the gateway holds its answers, the coroutines are woken by their descriptors (not
-- by small sleeps), lists, streams and workers are driven, stop() ends at once, errors are
-- reported where the host reports its own.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")
local raw = require("spec.helpers.raw")

local clock = core.monotonic

-- Each host as the specs use it: run(body) gives body an api { drive(x) -> handle,
-- every(seconds, fn) -> cancel (fn returning false ends it) } on a fresh loop, then runs the loop
-- until nothing is left on it.
local HOSTS = {
  luv = function(body)
    local uv = require("luv")
    local api = {}
    function api.drive(x) return require("ibkr.luv").drive(x) end
    function api.every(secs, fn)
      local t = uv.new_timer()
      local function cancel() if not t:is_closing() then t:close() end end
      local ms = math.max(1, math.floor(secs * 1000))
      t:start(ms, ms, function() if fn() == false then cancel() end end)
      return cancel
    end
    body(api)
    uv.run()
  end,
  cqueues = function(body)
    local cqueues = require("cqueues")
    local condition = require("cqueues.condition")
    local cq = cqueues.new()
    local api = {}
    function api.drive(x) return require("ibkr.cqueues").drive(cq, x) end
    function api.every(secs, fn)
      local cancelled, wake = false, condition.new()
      cq:wrap(function()
        while not cancelled do
          cqueues.poll(wake, secs)
          if cancelled or fn() == false then return end
        end
      end)
      return function() cancelled = true; wake:signal() end
    end
    body(api)
    assert(cq:loop())
  end,
}

-- A coroutine that resumes `inner` and passes on what it yields, measuring each resume and
-- whether a request is in flight (a pollable was yielded); beat() is the host timer's tick.
local function probe(inner)
  local p = { resumes = 0, longest = 0, in_flight = false, beats = 0, beats_in_flight = 0, gap = 0 }
  p.co = coroutine.create(function()
    while true do
      local t0 = clock()
      local r = table.pack(coroutine.resume(inner))
      local dt = clock() - t0
      p.resumes = p.resumes + 1
      if p.resumes > 1 and dt > p.longest then p.longest = dt end -- the first one starts up
      if not r[1] then error(r[2], 0) end
      if coroutine.status(inner) == "dead" then return end
      p.in_flight = r[3] ~= nil
      coroutine.yield(table.unpack(r, 2, r.n))
    end
  end)
  function p.beat()
    local t = clock()
    if p.last and t - p.last > p.gap then p.gap = t - p.last end
    p.last = t
    p.beats = p.beats + 1
    if p.in_flight then p.beats_in_flight = p.beats_in_flight + 1 end
  end
  return p
end

local WATCHDOG = 30 -- seconds: a spec that is not done by then has failed (and ends the loop)

for _, name in ipairs{ "luv", "cqueues" } do
  local host = HOSTS[name]
  describe("ibkr." .. name .. ".drive", function()
    local m
    setup(function() m = assert(mock.start{ tls = true, pacing = false }) end)
    teardown(function() m:stop() end)
    before_each(function()
      m:reset()
    end)

    it("keeps the host's timer firing while the gateway holds its answers; woken by descriptors", function()
      m:fault{ path = "/tickle", kind = "delay", seconds = 1, count = 2 }
      local s = ibkr.new{ base_url = m.url }
      local p = probe(s:keepalive{ interval = 0.2 })
      local timed_out = false
      host(function(api)
        local h = api.drive(p.co)
        local watchdog
        local beat = api.every(0.01, function()
          p.beat()
          if s:stats().requests >= 3 then
            h:stop()
            watchdog()
            return false
          end
        end)
        watchdog = api.every(WATCHDOG, function()
          timed_out = true
          h:stop()
          beat()
          return false
        end)
      end)
      assert.is_false(timed_out, "the keep-alive did not make 3 requests")
      assert.is_true(#m:api_log("/tickle") >= 3)              -- the gateway saw them
      assert.equal(2, m:state().counters.faults_applied)      -- two of them held 1 s each
      -- the host timer fired while the held answers were awaited (a blocked loop: once at most)
      assert.is_true(p.beats_in_flight >= 3, "host timer beats during requests: " .. p.beats_in_flight)
      -- woken when an answer is there, not every few ms (a 1 s wait in 5 ms sleeps: 200 resumes)
      assert.is_true(p.resumes <= 30, p.resumes .. " resumes for " .. s:stats().requests .. " requests")
      print(string.format("\n[ibkr.%s] %d resumes, longest %.3f ms; host timer (10 ms): %d beats, "
        .. "%d while a request was in flight, longest gap %.1f ms", name, p.resumes, p.longest * 1000,
        p.beats, p.beats_in_flight, p.gap * 1000))
      s:close()
    end)

    it("drives a list: a cooperative worker, a pausing worker and an object with :coroutine()", function()
      local s = ibkr.new{ base_url = m.url, cooperative = true }
      local got, pauses = {}, {}
      local worker = coroutine.create(function()
        got.accounts = assert(s:request("GET", "/portfolio/accounts"))
        got.tickle = assert(s:tickle())
      end)
      local pausing = coroutine.create(function()
        for i = 1, 3 do
          local t = clock()
          coroutine.yield(0.05)
          pauses[i] = clock() - t
        end
      end)
      local stream = { co = coroutine.create(function() coroutine.yield(0.01); got.stream = true end) }
      function stream:coroutine() return self.co end
      host(function(api) api.drive({ worker, pausing, stream }) end) -- returns when all ended
      assert.equal("dead", coroutine.status(worker))
      assert.equal("table", type(got.accounts))
      assert.equal("string", type(got.tickle.session))
      assert.is_true(got.stream)
      for i = 1, 3 do assert.is_true(pauses[i] >= 0.05, "resumed before the seconds it yielded") end
      s:close()
    end)

    it("stop() ends driving at once; driven again, a keep-alive keeps its schedule", function()
      local s = ibkr.new{ base_url = m.url }
      local ka = s:keepalive{ interval = 60 }
      local timed_out = false
      host(function(api)
        local h = api.drive(ka)
        local watchdog
        api.every(0.01, function()
          if s:stats().requests >= 1 then
            h:stop() -- nothing of the driver stays on the loop: it ends now, not in 60 s
            watchdog()
            return false
          end
        end)
        watchdog = api.every(WATCHDOG, function() timed_out = true; h:stop(); return false end)
      end)
      assert.is_false(timed_out)
      assert.equal("suspended", coroutine.status(ka))
      assert.equal(1, #m:api_log("/tickle"))
      host(function(api) -- driven again for a moment: its next tickle is 60 s away
        local h = api.drive(ka)
        api.every(0.3, function() h:stop(); return false end)
      end)
      assert.equal(1, #m:api_log("/tickle"))
      assert.is_true(ibkr.run(ka, { duration = 0.05 }) == false) -- and so for ibkr.run
      assert.equal(1, #m:api_log("/tickle"))
      s:close()
    end)

    it("a coroutine that raises: reported as the host reports its own errors; the others go on", function()
      if name == "luv" then
        -- luv reports an error raised in a callback and ends the process: in a child
        local p = assert(io.popen("lua5.4 -e " .. raw.q(raw.PRELUDE .. [[
          require("ibkr.luv").drive{
            coroutine.create(function() coroutine.yield(0.2); error("worker failed") end),
            coroutine.create(function() coroutine.yield(0.001); print("other done") end) }
          require("luv").run()
          print("not reached")]]) .. " 2>&1"))
        local out = p:read("a")
        local _, how, rc = p:close()
        assert.matches("^other done\n.*worker failed", out)
        assert.is_nil(out:find("not reached", 1, true))
        assert.is_true(how ~= "exit" or rc ~= 0)
      else
        local cqueues = require("cqueues")
        local cq = cqueues.new()
        local done = false
        require("ibkr.cqueues").drive(cq, {
          coroutine.create(function() coroutine.yield(0.01); error("worker failed") end),
          coroutine.create(function() coroutine.yield(0.02); done = true end),
        })
        local ok, err = cq:loop()
        assert.is_false(ok)
        assert.matches("worker failed", err)
        assert(cq:loop())
        assert.is_true(done)
      end
    end)

    it("raises on what it cannot drive, at the caller's line", function()
      local cq = name == "cqueues" and require("cqueues").new()
      local luv_drive, cq_drive = require("ibkr.luv").drive, require("ibkr.cqueues").drive
      local LINE = debug.getinfo(1, "l").currentline + 1
      local function drive(x) local h = cq and cq_drive(cq, x) or luv_drive(x); return h end
      local at = "drivers_spec.lua:" .. LINE .. ": ibkr%." .. name .. "%.drive: "
      for bad, says in pairs{
        [42] = "expects a coroutine, an object with a :coroutine%(%) method, or a list of them; got a number",
        [{ 1 }] = "element 1 is a number, not a coroutine or an object with a :coroutine%(%) method",
        [{ coroutine.create(print), "x" }] = "element 2 is a string",
        [{ coroutine = 1 }] = "expects a coroutine",
        [{ coroutine = function() return "nope" end }] =
          "the argument:coroutine%(%) returned a string, not a coroutine",
      } do
        local ok, err = pcall(drive, bad)
        assert.is_false(ok)
        assert.matches(at .. says, err)
      end
      if cq then
        local ok, err = pcall(function() local h = cq_drive({}, coroutine.create(print)); return h end)
        assert.is_false(ok)
        assert.matches("drivers_spec.lua:%d+: ibkr.cqueues.drive: argument 1 must be a cqueues controller",
          err)
      end
      local co = coroutine.create(function() coroutine.yield(60) end)
      local h = drive(co)
      local ok, err = pcall(drive, { co })
      assert.is_false(ok)
      assert.matches(at .. "coroutine 1 is already being driven", err)
      h:stop()
      drive(co):stop() -- free again after stop()
    end)
  end)
end

describe("s:keepalive_loop with cqueues.sleep", function()
  it("runs inline in a cqueues thread; the controller's other threads go on during a held answer", function()
    local cqueues = require("cqueues")
    local m <close> = assert(mock.start{ tls = false, pacing = false })
    m:fault{ path = "/tickle", kind = "delay", seconds = 0.5, count = 1 }
    local s = ibkr.new{ base_url = m.url }
    local cq = cqueues.new()
    local held_beats, ended = 0, false
    cq:wrap(function()
      s:keepalive_loop{ interval = 0.1, sleep = cqueues.sleep }
      ended = true
    end)
    cq:wrap(function()
      local give_up = clock() + WATCHDOG
      while s:stats().requests < 2 and clock() < give_up do
        if s:stats().requests == 0 then held_beats = held_beats + 1 end
        cqueues.sleep(0.01)
      end
      s:stop() -- the loop notices it within a second (keepalive.LOOP_SLICE)
    end)
    assert(cq:loop())
    assert.is_true(ended)
    assert.is_true(#m:api_log("/tickle") >= 2)
    assert.is_true(held_beats >= 3, "beats while the first answer was held: " .. held_beats)
    s:close()
  end)
end)

describe("host drivers without their host library", function()
  for _, case in ipairs{
    { "luv", "ibkr.luv", "lua%-luv", "require('ibkr.luv').drive(co)" },
    { "cqueues", "ibkr.cqueues", "lua%-cqueues", "require('ibkr.cqueues').drive({}, co)" },
  } do
    it(case[2] .. " loads " .. case[1] .. " only when driving, and says what to install", function()
      local p = assert(io.popen("lua5.4 -e " .. raw.q(raw.PRELUDE .. [[
        package.preload[']] .. case[1] .. [['] = function() error("module not found here") end
        local m = require(']] .. case[2] .. [[')
        print(type(m.drive), package.loaded[']] .. case[1] .. [['])
        local co = coroutine.create(print)
        local ok, err = pcall(function() ]] .. case[4] .. [[ end)
        print(ok, err)]]) .. " 2>&1"))
      local out = p:read("a")
      p:close()
      assert.matches("^function\tnil\nfalse\t%(command line%):%d+: " .. case[2]:gsub("%.", "%%.")
        .. ": the " .. case[1] .. " module is not installed %(Debian: apt install " .. case[3] .. "%)", out)
    end)
  end
end)

-- coroutine.close(co) from elsewhere while co waits on a request closes the request, and with it
-- the descriptor the driver handed to the host's poller: the driver must stop watching it first.
-- Each case closes the coroutine while its request cannot be answered (the mock holds it): on a
-- new connection (the engine's completion descriptor) or a kept one (the warm lane's duplicate of
-- the socket); in the loop turn that armed the watch (before libuv or cqueues has even handed the
-- descriptor to epoll) or a later one. Then the loop must carry
-- on and the driver end at once (not at the request's timeout: a watchdog would stop it, and says
-- so).
describe("coroutine.close(co) of a driven coroutine with a request in flight", function()
  -- A gateway of its own for each case: the tickle a case closed may still be on its way to the
  -- gateway when the case ends (its bytes sent, not read yet). Read after the next case's reset,
  -- it would pass for that case's first tickle, and the next case's hold would take the first
  -- tickle instead of the second: its worker never gets to `armed`, and the case hangs.
  local m
  before_each(function() m = assert(mock.start{ tls = false, pacing = false }) end)
  after_each(function() m:stop() end)

  -- the worker: on a kept connection, one answered tickle first; `armed()` right before the
  -- tickle the mock holds
  local WORKER = [[
    local function worker(s, kept, armed)
      return coroutine.create(function()
        if kept then assert(s:tickle()) end
        armed()
        s:tickle()
        error("not reached: the held tickle answered")
      end)
    end
  ]]

  local function hold(kept)
    m:fault{ path = "/tickle", kind = "hold", after = kept and 1 or 0, count = 1 }
  end

  for _, kept in ipairs{ false, true } do
    for _, when in ipairs{ "same turn", "later turn" } do
      local what = (kept and "a kept connection" or "a new connection") .. ", " .. when

      it("ibkr.luv: " .. what .. ": the loop goes on, the driver ends at once", function()
        hold(kept)
        -- luv aborts the process when epoll is handed a closed descriptor: in a child. The close
        -- runs from a prepare handle, right after the callback whose resume armed the watch and
        -- before the loop hands the descriptor to epoll; or a turn later, from a timer that
        -- prepare handle started (the loop's poll in between has the descriptor).
        local p = assert(io.popen("MOCK_URL=" .. raw.q(m.url) .. " KEPT=" .. (kept and "kept" or "new")
          .. " WHEN=" .. (when == "same turn" and "same" or "later") .. " lua5.4 -e "
          .. raw.q(raw.PRELUDE .. WORKER .. [[
          local uv, ibkr = require("luv"), require("ibkr")
          local kept, same = os.getenv("KEPT") == "kept", os.getenv("WHEN") == "same"
          local s = ibkr.new{ base_url = os.getenv("MOCK_URL"), cooperative = true, timeout = 600,
            pacing = false }
          local co, h
          local function close_it() print("closed", coroutine.close(co)) end
          local armed = false
          co = worker(s, kept, function() armed = true end)
          h = require("ibkr.luv").drive(co)
          local prepare = uv.new_prepare()
          prepare:start(function()
            if not armed then return end
            prepare:close()
            if same then return close_it() end
            local t = uv.new_timer()
            t:start(0, 0, function() t:close(); close_it() end)
          end)
          local watchdog = uv.new_timer()
          -- the watchdog ends the run: the driver stopped, and the prepare handle closed too (while
          -- the coroutine never got to its held tickle, that handle alone would keep the loop alive)
          watchdog:start(30000, 0, function()
            print("watchdog")
            h.stop()
            if not prepare:is_closing() then prepare:close() end
            watchdog:close()
          end)
          watchdog:unref()
          uv.run() -- returns once nothing but the (unreferenced) watchdog is left
          print("ended", coroutine.status(co))
          if not watchdog:is_closing() then watchdog:close() end
          uv.run()
          s:close()]]) .. " 2>&1"))
        local out = p:read("a")
        local ok = p:close()
        -- what the gateway saw: on a kept connection one answered tickle, then the held one on the
        -- same connection (which may reach the gateway's log only after the child ended); on a new
        -- connection at most the held one. A tickle on another connection is one this case did not
        -- send where it should: a resend, or another case's.
        local log, seen = m:api_log("/tickle"), {}
        for i, e in ipairs(log) do seen[i] = string.format("conn %s %s", e.conn, e.fault or "answered") end
        seen = "; the gateway's tickles: " .. table.concat(seen, ", ")
        assert.is_true(ok, out .. seen)
        assert.equal("closed\ttrue\nended\tdead\n", out, seen)
        assert.is_true(#log <= (kept and 2 or 1), seen)
        for i = 2, #log do assert.equal(log[1].conn, log[i].conn, seen) end
      end)

      it("ibkr.cqueues: " .. what .. ": the controller goes on, the driver ends at once", function()
        hold(kept)
        local cqueues = require("cqueues")
        local condition = require("cqueues.condition")
        local cq = cqueues.new()
        local s = ibkr.new{ base_url = m.url, cooperative = true, timeout = 600, pacing = false }
        -- (a flag beside the condition: a signal before the closer polls would be lost)
        local armed, is_armed = condition.new(), false
        local co = load(WORKER .. " return worker(...)")(s, kept, function()
          is_armed = true
          armed:signal()
        end)
        local h = require("ibkr.cqueues").drive(cq, co)
        local closed
        cq:wrap(function()
          while not is_armed do cqueues.poll(armed) end
          if when == "later turn" then
            repeat cqueues.sleep(0) until #m:held() > 0 -- each look lets the controller step
          end
          closed = { coroutine.close(co) }
        end)
        local give_up = clock() + WATCHDOG
        while cq:count() > 0 and clock() < give_up do
          local ok, err = cq:step(1)
          assert(ok, err)
        end
        assert.is_true(is_armed, "the worker never got to the tickle the gateway holds")
        assert.equal(0, cq:count(), "the driver's thread did not end")
        assert.same({ true }, closed)
        assert.equal("dead", coroutine.status(co))
        h:stop()
        s:close()
      end)
    end
  end

  it("ibkr.run: a coroutine closed by another in the same pass is not polled", function()
    hold(false)
    local s = ibkr.new{ base_url = m.url, cooperative = true, timeout = 600, pacing = false }
    local co = load(WORKER .. " return worker(...)")(s, false, function() end)
    local closer = coroutine.create(function()
      coroutine.yield(0)
      repeat coroutine.yield(0) until #m:held() > 0
      assert(coroutine.close(co))
      coroutine.yield(0)
    end)
    assert.is_true(ibkr.run({ co, closer }, { duration = WATCHDOG }))
    s:close()
  end)
end)

-- One driver at a time per coroutine, whichever drivers: a second raises at its caller's line
-- naming the one that drives it, until the first stops (or the coroutine ends).
describe("two drivers of one coroutine", function()
  local luv_drive, cq_drive = require("ibkr.luv").drive, require("ibkr.cqueues").drive
  local cq = require("cqueues").new()
  local DRIVERS = {
    ["ibkr.luv.drive"] = function(co) return luv_drive(co) end,
    ["ibkr.cqueues.drive"] = function(co) return cq_drive(cq, co) end,
    ["ibkr.run"] = function(co)
      -- run holds it while it runs: the second driver is asked from inside it
      return { run = function(second) return ibkr.run({ co, coroutine.create(second) }) end }
    end,
  }
  for first, drive1 in pairs(DRIVERS) do
    for second, drive2 in pairs(DRIVERS) do
      if second ~= "ibkr.run" then
        it(second .. " raises on a coroutine " .. first .. " drives", function()
          local co = coroutine.create(function() coroutine.yield(0.001) end)
          local h = drive1(co)
          local ok, err
          local function try()
            local LINE = debug.getinfo(1, "l").currentline + 1
            ok, err = pcall(function() local x = drive2(co); return x end)
            assert.is_false(ok)
            assert.matches("drivers_spec.lua:" .. LINE .. ": " .. second:gsub("%.", "%%.")
              .. ": coroutine 1 is already being driven %(by " .. first:gsub("%.", "%%.") .. "%)", err)
          end
          if h.run then
            h.run(try)
          else
            try()
            h:stop()
            drive2(co):stop() -- free again after stop()
          end
        end)
      end
    end
  end
end)
