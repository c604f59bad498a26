-- ibkr.core in the life of a process: fork() with sessions open and a request in flight (the child
-- refuses the parent's sessions and works with its own; the parent goes on with its connection),
-- fork() while the engine thread runs the process's first TLS handshakes, os.exit with requests in
-- flight. The C programs of spec/c/ and the Lua scripts run as processes of their own.
local raw = require("spec.helpers.raw")
local mock = require("spec.helpers.mock")

local PRELUDE, q, c_program = raw.PRELUDE, raw.q, raw.c_program

describe("ibkr.core and its process", function()
  local m
  setup(function() m = assert(mock.start{ tls = false, pacing = false }) end)
  teardown(function() if m then m:stop() end end)

  describe("fork() and os.exit", function()
    for _, tls in ipairs{ false, true } do
      it("fork() with sessions open and a request in flight is safe in the child (spec/c/fork.c, "
          .. (tls and "HTTPS" or "HTTP") .. ")", function()
        -- the parent's request goes to `held`, stopped (SIGSTOP) from before the request until
        -- after the child ended: in flight at fork() whatever the machine's load; the child
        -- works against `own`
        local held = assert(mock.start{ tls = tls, pacing = false })
        local own = tls and assert(mock.start{ tls = true, pacing = false }) or m
        local ok, out = c_program("spec/c/fork.c", held.url, held.pid .. " " .. q(own.url))
        os.execute("kill -CONT " .. held.pid) -- (fork.c resumes it, unless it failed before)
        held:stop()
        if tls then own:stop() end
        assert(ok, out)
        assert.matches("fork: ok", out)
      end)
    end

    it("fork() while the engine thread runs the process's first TLS handshakes: the child's new session "
        .. "completes (spec/c/fork.c handshake, several runs)", function()
      local tm = assert(mock.start{ tls = true, pacing = false })
      for i = 1, 12 do
        local delay = string.format("%.3f", (i % 4) * 0.001)
        local ok, out = c_program("spec/c/fork.c", tm.url, "handshake " .. delay)
        assert(ok, "run " .. i .. " (delay " .. delay .. "): " .. out)
        assert.matches("fork: ok", out)
      end
      tm:stop()
    end)

    it("os.exit with HTTPS requests in flight exits cleanly", function()
      local tm = assert(mock.start{ tls = true, pacing = false })
      local script = PRELUDE
        .. " local core = require('ibkr.core'); local keep = {};"
        .. " for _ = 1, 8 do local s = core.new{ base_url = " .. string.format("%q", tm.url) .. " };"
        .. "  keep[#keep + 1] = s; keep[#keep + 1] = s:start('POST', '/tickle') end;"
        .. " core.sleep(0.003); os.exit(0)"
      for i = 1, 10 do
        local ok, how, code = os.execute("env -u LD_PRELOAD lua5.4 -e " .. q(script) .. " >/dev/null 2>&1")
        assert.are.same({ true, "exit", 0 }, { ok, how, code }, "run " .. i)
      end
      tm:stop()
    end)
  end)
end)
