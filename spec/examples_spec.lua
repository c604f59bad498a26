-- The examples and the demo, run as a user would, against the mock gateway (HTTPS).
local mock = require("spec.helpers.mock")

local q = require("spec.helpers.raw").q

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("a")
  p:close()
  local body, rc = out:match("^(.-)rc=(%d+)\n$")
  return tonumber(rc), body
end

describe("examples", function()
  local m
  setup(function() m = assert(mock.start{ tls = true }) end)
  teardown(function() m:stop() end)

  it("plain script", function()
    local rc, out = sh("lua5.4 examples/plain.lua " .. q(m.url) .. " 1.5")
    assert.equal(0, rc, out)
    assert.equal("session (start) -> ready\n", out)
  end)

  it("luv timer host: the loop's other timer keeps beating", function()
    local rc, out = sh("lua5.4 examples/luv_host.lua " .. q(m.url) .. " 1.5")
    assert.equal(0, rc, out)
    assert.matches("^session %(start%) %-> ready\nheartbeats: (%d+)\n$", out)
    -- (a beat every 100 ms: 15 on an idle machine; how many a loaded one fits is not the point)
    assert.is_true(tonumber(out:match("heartbeats: (%d+)")) >= 2)
  end)

  it("cqueues host: ends when told, not at the next tickle", function()
    local t0 = os.time()
    local rc, out = sh("lua5.4 examples/cqueues_host.lua " .. q(m.url) .. " 1.5")
    assert.is_true(os.time() - t0 < 30, "it waited out the keep-alive's 60 s interval")
    assert.equal(0, rc, out)
    assert.matches("^session %(start%) %-> ready\nkeep%-alive ended\nheartbeats: %d+\n$", out)
  end)

  it("C program embedding Lua 5.4", function()
    local bin = os.tmpname()
    local flags = "$(pkg-config --cflags --libs lua5.4 2>/dev/null || echo -I/usr/include/lua5.4 -llua5.4)"
    local rc, out = sh("cc -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -o " .. q(bin)
      .. " examples/c_host/host.c " .. flags)
    assert.equal(0, rc, out)
    rc, out = sh("IBKR_ROOT=. " .. q(bin) .. " " .. q(m.url) .. " 1.5")
    os.remove(bin)
    assert.equal(0, rc, out)
    assert.matches("^session %(start%) %-> ready\nframes: %d+, resumes: %d+, longest resume: [%d.]+ ms\n$",
      out)
    -- 10 ms frames went on next to the keep-alive (150 on an idle machine); how long one resume
    -- takes is a figure of make bench (bench/stall.lua)
    assert.is_true(tonumber(out:match("frames: (%d+)")) >= 10)
  end)
end)

describe("make demo", function()
  it("shows the keep-alive noticing and repairing each scene, and ends by itself", function()
    local t0 = os.time()
    -- (demo.sh waits for the keep-alive's own line after each scene; DEMO_STEP=0: no lingering
    -- for a human watcher)
    local p = assert(io.popen("DEMO_STEP=0 examples/demo.sh 2>/dev/null; echo \"rc=$?\""))
    local out = p:read("a")
    p:close()
    assert.is_true(os.time() - t0 < 120) -- (17 s on an idle machine; a scene that hangs: minutes)
    assert.matches("rc=0\n$", out)
    assert.is_nil(out:find("\27", 1, true), "escape codes written to a pipe")
    local states = {}
    for st in out:gmatch("\n%d%d%d%d%-%d%d%-%d%dT[%d:]+Z ([%a_]+)") do states[#states + 1] = st end
    assert.same({ "ready", "disconnected", "ready", "unauthenticated", "ready", "competing", "ready",
      "no_session", "ready", "down", "ready", "stopped" }, states, out) -- stopped by SIGTERM: the last line
  end)
end)
