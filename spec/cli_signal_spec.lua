-- core.signal_catch / signal_caught / signal_wait, in child processes (a caught signal changes
-- the whole process's disposition: never in the busted process itself). Waking a long wait is
-- covered end to end by cli_bounds_spec.lua (keepalive asleep for its 60 s interval).

-- Runs a Lua chunk in a child lua5.4 with the checkout's module; returns its stdout and how it ended.
local function child(code)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write('package.cpath = "./?.so;" .. package.cpath\nlocal core = require("ibkr.core")\n',
    'local pid = io.open("/proc/self/stat"):read("l"):match("^%d+")\n', code)
  f:close()
  local p = assert(io.popen("exec lua5.4 " .. script .. " 2>&1"))
  local out = p:read("a")
  local _, how, rc = p:close()
  os.remove(script)
  return out, how, rc
end

describe("core.signal_*", function()
  it("a caught SIGTERM is recorded, does not end the process, and ends a wait at once", function()
    local out, how, rc = child([[
      print(core.signal_caught())
      print(core.signal_catch{ "INT", "TERM" })
      os.execute("kill -TERM " .. pid)   -- delivered while os.execute runs
      print(core.signal_caught())
      local t = core.monotonic()
      print(core.signal_wait(30), core.monotonic() - t < 10) -- at once, not after 30 s
      os.execute("kill -INT " .. pid)    -- the first one stays the answer
      print(core.signal_caught())
    ]])
    assert.same({ "exit", 0 }, { how, rc })
    assert.equal("nil\ntrue\nTERM\nTERM\ttrue\nTERM\n", out)
  end)

  it("without a signal, signal_wait sleeps the time and returns nil", function()
    local out = child([[
      core.signal_catch{ "TERM" }
      local t = core.monotonic()
      local r = core.signal_wait(0.05)
      print(r, core.monotonic() - t >= 0.05)
      print(core.signal_wait(0), core.signal_wait(-1))
    ]])
    assert.equal("nil\ttrue\nnil\tnil\n", out)
  end)

  it("an unknown name raises and installs nothing", function()
    local out, how, rc = child([[
      print(pcall(core.signal_catch, { "TERM", "NOPE" }))
      print(pcall(core.signal_catch, "TERM"))
      io.stdout:flush()
      os.execute("kill -TERM " .. pid) -- not caught: the default action ends the process
      print("still here")
    ]])
    assert.matches("^false\t[^\n]*unknown signal 'NOPE'\nfalse\t[^\n]*table expected", out)
    assert.is_nil(out:find("still here", 1, true))
    assert.same({ "signal", 15 }, { how, rc })
  end)
end)
