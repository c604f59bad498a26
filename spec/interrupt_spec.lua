-- Ctrl-C in a plain lua5.4 script: the interpreter's SIGINT handler only asks Lua to stop at its
-- next instruction, so every wait of the C module must give control back to Lua when that
-- happened. Real lua5.4 processes against the mock gateway, interrupted once they are waiting
-- (known from the mock's request log or a line the child prints); each must end with the
-- interpreter's "interrupted!" long before what it waited for. Another signal with a handler
-- does not cut a wait short.
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")
local q = require("spec.helpers.raw").q

local SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1
local BOUND = 5 * SCALE -- seconds; what the children wait for is 60 s away

-- A child lua5.4 running `code` (the checkout's modules: spec/run's paths are inherited), with
-- URL set to the mock's base URL. Its stderr goes to its stdout.
local function spawn(code, url)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write("local URL = ", string.format("%q", url or ""), "\nlocal core = require('ibkr.core')\n", code)
  f:close()
  local p = assert(io.popen("echo $$; exec lua5.4 " .. q(script) .. " 2>&1"))
  return { p = p, pid = assert(tonumber(p:read("l"))), script = script }
end

local function kill(c, sig)
  c.sent = core.monotonic()
  os.execute("kill -" .. sig .. " " .. c.pid)
end

-- Waits for the child to end; returns its output (after what was read), how it ended, its code,
-- and the seconds since the signal.
local function finish(c)
  local out = c.p:read("a")
  local _, how, rc = c.p:close()
  os.remove(c.script)
  return out, how, rc, c.sent and core.monotonic() - c.sent
end

local await_requests = require("spec.helpers.await").requests -- on the mock's request log

local function assert_interrupted(c)
  local out, how, rc, secs = finish(c)
  assert.same({ "exit", 1 }, { how, rc }, out)
  assert.matches("interrupted!", out)
  assert.is_nil(out:find("not reached", 1, true), out)
  assert.is_true(secs < BOUND, string.format("ended %.1f s after SIGINT", secs))
  return out
end

describe("SIGINT under lua5.4", function()
  local m
  setup(function() m = assert(mock.start{ tls = true, pacing = false }) end)
  teardown(function() m:stop() end)
  before_each(function() m:reset() end)

  it("ends ibkr.run(keepalive) while it waits for the next tickle (60 s away)", function()
    local c = spawn([[
      local ibkr = require("ibkr")
      local s = ibkr.new{ base_url = URL }
      ibkr.run(s:keepalive{ interval = 60, on_state = function(new) print(new); io.stdout:flush() end })
      print("not reached")]], m.url)
    assert.equal("ready", c.p:read("l")) -- its first tickle was answered: now it waits
    assert.equal(1, #m:api_log("/tickle"))
    kill(c, "INT")
    assert.matches("in function 'ibkr.run.run'", assert_interrupted(c)) -- raised from within the run
  end)

  it("ends ibkr.run while a cooperative call's answer is held", function()
    m:fault{ path = "/tickle", kind = "delay", seconds = 60, count = 10 }
    local c = spawn([[
      local ibkr = require("ibkr")
      local s = ibkr.new{ base_url = URL, cooperative = true, timeout = 120 }
      ibkr.run(coroutine.create(function() s:tickle() end))
      print("not reached")]], m.url)
    await_requests(m, "/tickle", 1)
    kill(c, "INT")
    assert_interrupted(c)
  end)

  it("ends a blocking call in flight", function()
    m:fault{ path = "/tickle", kind = "delay", seconds = 60, count = 10 }
    local c = spawn([[
      local s = require("ibkr").new{ base_url = URL, timeout = 120 }
      print(s:tickle())
      print("not reached")]], m.url)
    await_requests(m, "/tickle", 1)
    kill(c, "INT")
    assert.matches("in method 'perform'", assert_interrupted(c))
  end)

  it("ends a blocking call made while the session's lane is busy (its own connection)", function()
    m:fault{ kind = "delay", seconds = 60, count = 10 }
    local c = spawn([[
      local s = require("ibkr").new{ base_url = URL, cooperative = true, timeout = 120 }
      local co = coroutine.create(function() return s:tickle() end)
      assert(coroutine.resume(co)) -- in flight in the lane
      print(s:request("GET", "/portfolio/accounts"))
      print("not reached")]], m.url)
    await_requests(m, "/portfolio/accounts", 1)
    kill(c, "INT")
    assert.matches("in method 'perform'", assert_interrupted(c))
  end)

  it("ends req:wait(), core.sleep and core.signal_wait", function()
    m:fault{ path = "/tickle", kind = "delay", seconds = 60, count = 10 }
    local c = spawn([[
      local req = core.new{ base_url = URL, timeout = 120 }:start("POST", "/tickle")
      print(req:wait())
      print("not reached")]], m.url)
    await_requests(m, "/tickle", 1)
    kill(c, "INT")
    assert.matches("in method 'wait'", assert_interrupted(c))
    for _, call in ipairs{ "core.sleep(60)", "core.signal_wait(60)" } do
      c = spawn('print("waiting"); io.stdout:flush(); ' .. call .. '; print("not reached")')
      assert.equal("waiting", c.p:read("l"))
      kill(c, "INT")
      assert_interrupted(c)
    end
  end)

  it("another signal with a handler (SIGUSR1, caught) cuts neither a blocking call nor a sleep", function()
    m:fault{ path = "/tickle", kind = "delay", seconds = 2, count = 1 }
    local c = spawn([[
      core.signal_catch{ "USR1" }
      local s = require("ibkr").new{ base_url = URL }
      local res, err = s:tickle()
      print(res and "answered" or tostring(err), core.signal_caught())
      print("sleeping"); io.stdout:flush()
      local t = core.monotonic()
      core.sleep(1)
      print(core.monotonic() - t >= 1)]], m.url)
    await_requests(m, "/tickle", 1)
    kill(c, "USR1")
    assert.equal("answered\tUSR1", c.p:read("l"))
    assert.equal("sleeping", c.p:read("l"))
    kill(c, "USR1")
    local out, how, rc = finish(c)
    assert.same({ "exit", 0 }, { how, rc }, out)
    assert.equal("true\n", out)
  end)
end)
