-- Every way a request ends wakes whoever waits for it: the descriptor req:pollfd() gave is
-- readable at once (a host asleep in poll(2) on it wakes), req:wait() returns, and a cooperative
-- call sees the end at its next resume -- whether the request was still queued for the engine
-- thread, running there, stepped in the warm lane, or inherited by a fork()ed child.
local core = require("ibkr.core")
local ibkr = require("ibkr")
local mock = require("spec.helpers.mock")
local raw = require("spec.helpers.raw")
local socket = require("socket")

local SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1

-- a listener that takes connections (the kernel's backlog does) and never answers
local function silent()
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(0)
  local _, port = srv:getsockname()
  return srv, "http://127.0.0.1:" .. port
end

local function readable(fd)
  return core.poll({ fd }, 0) == 1
end

-- the connection the listener was given, waited for up to 5 s (the engine connects)
local function accepted(srv)
  local c
  local limit = core.monotonic() + 5 * SCALE
  while not c and core.monotonic() < limit do
    socket.select({ srv }, nil, 0.1)
    c = srv:accept()
  end
  return assert(c, "the engine thread never connected")
end

describe("a request that ends wakes its waiter", function()
  local srv, url
  setup(function() srv, url = silent() end)
  teardown(function() srv:close() end)
  after_each(function()
    local c = srv:accept()
    while c do c:close(); c = srv:accept() end
  end)

  it("when its session closes while it still waits for the engine thread (queued)", function()
    -- A POST not marked repeatable runs on the engine thread; s:close() right after s:start()
    -- finds it still queued most of the time, running the rest: both must wake the waiter.
    for _ = 1, 100 do
      local s = core.new{ base_url = url, timeout = 60 }
      local req = assert(s:start("POST", "/order"))
      local fd = req:pollfd()
      assert.is_true(fd >= 0)
      s:close()
      assert.is_true(readable(fd), "the closed request's descriptor is not readable")
      assert.is_true(req:wait(0))
      local r, err = req:result()
      assert.is_nil(r)
      assert.are.equal("closed", err.kind)
      req:close()
    end
  end)

  it("when its session closes while it runs on the engine thread", function()
    local s = core.new{ base_url = url, timeout = 60 }
    local req = assert(s:start("POST", "/order"))
    local fd = req:pollfd()
    local c = accepted(srv)
    assert.is_false(readable(fd))
    s:close()
    assert.is_true(readable(fd))
    assert.are.equal("closed", select(2, req:result()).kind)
    c:close()
  end)

  it("when the request closes: the engine lets go of it, and its session goes on", function()
    local s = core.new{ base_url = url, timeout = 60 }
    local held = assert(s:start("POST", "/order"))
    local c = accepted(srv)
    held:close()
    assert.are.equal("closed", select(2, held:result()).kind)
    local again = assert(s:start("POST", "/order"))
    local fd = again:pollfd()
    local c2 = accepted(srv)
    s:close()
    assert.is_true(readable(fd))
    c:close()
    c2:close()
  end)

  it("for a cooperative call, at the resume after another coroutine closed the session", function()
    -- ibkr.run waits in poll(2) on the call's descriptor, up to its timeout (20 s): the close must
    -- end that wait, not the timeout
    for _ = 1, 10 do
      local s = ibkr.new{ base_url = url, cooperative = true, timeout = 20 }
      local got
      local caller = coroutine.create(function()
        got = { s:request("POST", "/order", { retry = false }) }
      end)
      local closer = coroutine.create(function()
        coroutine.yield(0)
        s:close()
      end)
      local t0 = core.monotonic()
      assert.is_true(ibkr.run({ caller, closer }, { duration = 30 }))
      assert.is_true(core.monotonic() - t0 < 10, "the call waited out its timeout")
      assert.is_nil(got[1])
      assert.are.equal("closed", got[2].kind)
    end
  end)
end)

describe("a request inherited by a fork()ed child", function()
  local m
  setup(function() m = assert(mock.start{ pacing = false }) end)
  teardown(function() if m then m:stop() end end)

  it("has ended there: its descriptor wakes the child's waiter at once (spec/c/fork_wake.c)", function()
    m:fault{ path = "/tickle", kind = "delay", seconds = 30 }
    local ok, out = raw.c_program("spec/c/fork_wake.c", m.url)
    assert.is_true(ok, out)
    assert.matches("fork_wake: ok", out)
  end)
end)
