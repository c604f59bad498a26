-- core.spawn: child processes watched without blocking (src/proc.c), with real processes.
-- Every wait is on the process object's descriptor (core.poll), never a sleep.
local core = require("ibkr.core")
local pids = require("spec.helpers.pids")

-- Reads everything the process prints until it has ended and both pipes are closed, waiting on
-- its descriptor; returns stdout, stderr, how, code.
local function collect(p, limit)
  local out, err = {}, {}
  local stop = core.monotonic() + (limit or 20)
  local how, code, open
  repeat
    assert(core.monotonic() < stop, "the process did not end")
    core.poll({ p:pollfd() or -1 }, p:timeout() or 1)
    local o, e
    o, e, open = p:read()
    out[#out + 1], err[#err + 1] = o, e
    if not how then how, code = p:wait() end
  until how and not open
  return table.concat(out), table.concat(err), how, code
end

-- The pids a file lists (one a line).
local function pids_in(path)
  local t = {}
  for l in io.lines(path) do t[#t + 1] = l end
  return t
end

-- The pids of this process's children that are zombies (state Z, ppid = ours), among `of`.
local function zombies(of)
  local f = assert(io.open("/proc/self/stat"))
  local me = f:read("l"):match("^(%d+)")
  f:close()
  local z = {}
  for _, pid in ipairs(of) do
    local sf = io.open("/proc/" .. pid .. "/stat")
    local line = sf and sf:read("l") or ""
    if sf then sf:close() end
    local st, ppid = line:match("^%d+ %b() (%a) (%d+)")
    if st == "Z" and ppid == me then z[#z + 1] = pid end
  end
  return z
end

-- Waits (bounded: 10 s) until none of the pids is in /proc any more: ended and reaped. Each
-- turn is a core.poll, which reaps the released children that ended meanwhile.
local function reaped(of)
  local stop = core.monotonic() + 10
  local function there()
    for _, pid in ipairs(of) do
      if pids.stat(pid) then return true end
    end
    return false
  end
  while there() and core.monotonic() < stop do core.poll({}, 0.01) end
  return zombies(of)
end

local function alive(pid) return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true end

describe("core.spawn", function()
  it("runs argv with execve: stdout and stderr apart, the exit code, the environment it is given", function()
    local p = assert(core.spawn(
      { "/bin/sh", "-c", 'echo "out $A"; echo "err $B" >&2; echo "${HOME-unset}"; exit 3' },
      { A = "1 2", B = "x=y", HOME = false }))
    assert.equal("ibkr.proc", (tostring(p):match("^(%S+)")))
    assert.is_true(math.type(p:pid()) == "integer" and p:pid() > 1)
    assert.equal("r", p:events())
    local out, err, how, code = collect(p)
    assert.same({ "out 1 2\nunset\n", "err x=y\n", "exit", 3 }, { out, err, how, code })
    assert.same({ "exit", 3 }, { p:wait() }) -- the same answer again
    p:close()
    p:close()
  end)

  it("inherits the rest of the environment and stdin is /dev/null", function()
    local p = assert(core.spawn({ "/bin/sh", "-c", 'printf "%s|" "$PATH"; cat; echo end' }))
    local out = collect(p)
    assert.equal(os.getenv("PATH") .. "|end\n", out)
  end)

  it("a program that cannot be run ends with 127 and says why on its stderr", function()
    local p = assert(core.spawn({ "/nonexistent/program" }))
    local out, err, how, code = collect(p)
    assert.same({ "", "exit", 127 }, { out, how, code })
    assert.matches("cannot execute /nonexistent/program: no such file", err, 1, true)
  end)

  it("a program whose arguments or environment are too long (E2BIG) says so on its stderr", function()
    local huge = string.rep("x", 200000)        -- one string beyond the kernel's 128 KiB
    for _, args in ipairs{ { { "/bin/true", huge } }, { { "/bin/true" }, { IBKR_HUGE = huge } } } do
      local p = assert(core.spawn(table.unpack(args)))
      local out, err, how, code = collect(p)
      assert.same({ "", "exit", 127 }, { out, how, code })
      assert.matches("cannot execute /bin/true: the arguments and environment are too long", err, 1, true)
    end
  end)

  it("reports a death by signal", function()
    local p = assert(core.spawn({ "/bin/sh", "-c", "kill -KILL $$" }))
    local _, _, how, code = collect(p)
    assert.same({ "signal", 9 }, { how, code })
  end)

  it("keeps none of this process's descriptors open in the child", function()
    local socket = require("socket")
    local srv = assert(socket.bind("127.0.0.1", 0))
    local p = assert(core.spawn({ "/bin/sh", "-c", "ls /proc/$$/fd" }))
    local out = collect(p)
    srv:close()
    local fds = {}
    for fd in out:gmatch("%d+") do fds[#fds + 1] = tonumber(fd) end
    table.sort(fds)
    -- 0, 1, 2 and the descriptor ls opens to read the directory
    assert.is_true(#fds <= 4, out)
    for _, fd in ipairs(fds) do assert.is_true(fd <= 3, out) end
  end)

  it("puts the child in a process group of its own, which kill signals whole", function()
    local pidfile = os.tmpname()
    local p = assert(core.spawn({ "/bin/sh", "-c",
      "trap '' TERM; sleep 60 & echo $! > " .. pidfile .. "; echo started; wait" }))
    -- wait until the child said it started its own child
    local seen = ""
    while not seen:find("started", 1, true) do
      core.poll({ p:pollfd() }, 5)
      seen = seen .. p:read()
    end
    local sleeper = pids_in(pidfile)[1]
    local _, pgrp, started = pids.stat(sleeper)
    assert.equal(p:pid(), pgrp)
    assert.is_true(p:kill("TERM")) -- ignored by both (SIG_IGN is inherited)
    assert.is_nil(p:wait(true))
    assert.is_true(p:kill("KILL"))
    local _, _, how, code = collect(p)
    assert.same({ "signal", 9 }, { how, code })
    -- the group's other member got it too (gone, or a zombie; or its pid taken by another process)
    assert.is_true(pids.gone(sleeper, started), "the group's sleep survived")
    os.remove(pidfile)
  end)

  it("wait(true) leaves the ended child a zombie, so its group may still be signalled; once reaped, kill "
    .. "is refused", function()
    local p = assert(core.spawn({ "/bin/sh", "-c", "exit 0" }))
    local how
    repeat
      core.poll({ p:pollfd() }, p:timeout() or 5)
      p:read()
      how = p:wait(true)
    until how
    assert.equal("Z", io.open("/proc/" .. p:pid() .. "/stat"):read("l"):match("^%d+ %b() (%a)"))
    assert.is_true(p:kill("KILL"))
    assert.same({ "exit", 0 }, { p:wait() })
    local ok, err = p:kill("TERM")
    assert.is_nil(ok)
    assert.matches("reaped", err)
  end)

  it("a child that ended while a daemon it started holds the pipes is seen ended at once", function()
    local pidfile = os.tmpname()
    local p = assert(core.spawn({ "/bin/sh", "-c", "sleep 30 & echo $! > " .. pidfile .. "; echo forked" }))
    local how, code
    local seen = ""
    local stop = core.monotonic() + 20
    repeat
      assert(core.monotonic() < stop)
      core.poll({ p:pollfd() }, p:timeout() or 5)
      seen = seen .. p:read()
      how, code = p:wait()
    until how
    assert.same({ "exit", 0, "forked\n" }, { how, code, seen })
    local daemon = pids_in(pidfile)[1]
    assert.is_true(alive(daemon)) -- its business: left alone
    p:close()
    assert.is_true(alive(daemon)) -- reaped children's groups are not signalled by close
    os.execute("kill " .. daemon)
    os.remove(pidfile)
  end)

  it("close kills a child still running (its group) and releases the descriptors", function()
    local p = assert(core.spawn({ "/bin/sh", "-c", "sleep 60" }))
    local pid = p:pid()
    local fd = p:pollfd()
    p:close()
    assert.is_nil(p:pollfd())
    -- SIGKILL ended it (a zombie until reaped, or reaped already by close)
    assert.is_true(pids.gone(pid))
    assert.is_true(math.type(fd) == "integer")
  end)

  it("a process collected or closed before it was waited leaves no zombie, without blocking", function()
    local started = {}
    local function spawn_sleep()
      local p = assert(core.spawn({ "/bin/sleep", "60" }))
      started[#started + 1] = p:pid()
      return p
    end
    do
      for _ = 1, 3 do spawn_sleep() end         -- dropped at once
      local closed = spawn_sleep()
      closed:close()
      local termed = spawn_sleep()
      termed:close("TERM")
    end
    collectgarbage()
    collectgarbage()
    -- every child was signalled: it ends, and is reaped by this process's next calls
    assert.same({}, reaped(started))
    for _, pid in ipairs(started) do assert.is_nil(pids.stat(pid)) end
  end)

  it("raises for bad arguments (a programmer's mistake)", function()
    for _, bad in ipairs{ {}, { 1 }, { "a\0b" }, "sh" } do
      local ok, err = pcall(core.spawn, bad)
      assert.is_false(ok)
      assert.matches("bad argument #1", err)
    end
    assert.matches("env names", select(2, pcall(core.spawn, { "/bin/true" }, { ["A=B"] = "x" })))
    assert.matches("env values", select(2, pcall(core.spawn, { "/bin/true" }, { A = 1 })))
    assert.matches("NUL", select(2, pcall(core.spawn, { "/bin/true" }, { A = "x\0y" })))
    local p = assert(core.spawn({ "/bin/true" }))
    assert.matches("signal must be", select(2, pcall(p.kill, p, "STOP")))
    collect(p)
  end)
end)
