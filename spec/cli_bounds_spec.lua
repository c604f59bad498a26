-- ibkr-session ends when it should: --timeout bounds the whole command (retries included) against
-- a gateway that does not answer; SIGINT/SIGTERM end keepalive (and any command) at once, with a
-- last line and exit 130/143. Real processes against the mock gateway, which holds its answers
-- back (a "hold" fault: an answer comes only after 30 s, far past every --timeout here), so a
-- command that ends with a timeout did not wait for an answer, and the requests the mock saw
-- tell whether retries were cut. (The contract's figures -- --timeout + 0.5 s, a signal obeyed
-- within a second -- are timings of the machine; the specs check that the command did not wait
-- out its retries or its 60 s interval.)
local mock = require("spec.helpers.mock")
local cli = require("spec.helpers.cli")

local SCALE = cli.SCALE
local HUNG = { kind = "hold", seconds = 30, count = 1000 } -- a gateway that does not answer
local PROMPT = 10 * SCALE -- a signal obeyed, not a 60 s interval or timeout waited out

local await_requests = require("spec.helpers.await").requests -- on the mock's request log

describe("ibkr-session time bounds", function()
  local m
  setup(function() m = assert(mock.start{ tls = true, pacing = false, init_delay = 0, reauth_delay = 0 }) end)
  teardown(function() m:stop() end)
  before_each(function()
    m:reset()
    m:clear_faults()
    m:clear_log()
  end)

  it("a healthcheck against a hung gateway ends at --timeout, retries included", function()
    m:fault(HUNG)
    for _, args in ipairs{
      { "--timeout", "2", "status" },
      { "--timeout", "1.5", "--retries", "5", "status" },
      { "--timeout", "1", "--retries", "3", "tickle" },
      { "--timeout", "1", "validate" },
      { "--timeout", "1", "init" },
      { "--timeout", "1", "logout" },
      { "--timeout", "1", "request", "GET", "/sso/validate" },
      { "--timeout", "1.5", "wait", "--init" },
    } do
      table.insert(args, 1, m.url)
      table.insert(args, 1, "--url")
      m:clear_log()
      local rc, out, err = cli.run(args)
      local what = table.concat(args, " ", 3)
      assert.equal(2, rc, what)
      assert.matches("timeout", out .. err, nil, what)
      -- the first attempt took all the time there was: no retry went out after it
      assert.equal(1, #m:log(), what .. ": requests sent")
    end
  end)

  it("--timeout: the gateway's own answer is reported when the last attempt is cut", function()
    m:fault{ path = "/tickle", kind = "status", status = 503, body = "", count = 1 }
    m:fault(HUNG)
    local rc, _, err = cli.run{ "--url", m.url, "--timeout", "2", "--retries", "3", "tickle" }
    assert.equal(1, rc)
    assert.equal(2, #m:api_log("/tickle"))
    assert.matches("^ibkr%-session: tickle: ibkr: http: POST /tickle: HTTP 503", err)
  end)

  it("--retries N: N retries of a retryable failure, then the failure", function()
    m:fault{ path = "/tickle", kind = "status", status = 503, body = "", count = 1000 }
    local rc = cli.run{ "--url", m.url, "--retries", "3", "tickle" }
    assert.equal(1, rc)
    assert.equal(4, #m:api_log("/tickle"))
    m:clear_log()
    cli.run{ "--url", m.url, "--retries", "0", "tickle" }
    assert.equal(1, #m:api_log("/tickle"))
  end)

  for sig, code in pairs{ INT = 130, TERM = 143 } do
    it("keepalive: SIG" .. sig .. " ends it at once, with a last line and exit " .. code, function()
      local p = cli.spawn{ "--url", m.url, "keepalive", "--interval", "60" }
      assert.matches(" ready: authenticated=true", p:line())
      p:kill(sig)
      local how, rc, rest, _, secs = p:finish()
      assert.same({ "exit", code }, { how, rc })
      assert.is_true(secs < PROMPT, "took " .. secs .. " s")
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ stopped by SIG" .. sig
        .. " %(last state: ready, exit " .. code .. "%)\n$", rest)
    end)
  end

  it("keepalive: a signal while a request hangs ends it too, not the answer (JSON last line)", function()
    m:fault(HUNG)
    local p = cli.spawn{ "--url", m.url, "--json", "keepalive" }
    assert.is_true(m:await_held(1))
    p:kill("TERM")
    local how, rc, rest, err = p:finish()
    assert.same({ "exit", 143 }, { how, rc })
    assert.equal(1, #m:held(), "it ended with the answer, not the signal")
    local lines = cli.json_lines(rest)
    assert.equal(1, #lines)
    assert.same({ "stopped", "signal", "TERM", 143 },
      { lines[1].event, lines[1].reason, lines[1].signal, lines[1].exit })
    assert.equal("", err)
  end)

  it("a one-shot command (wait) ends at SIGINT, exit 130", function()
    m:set_state("unauthenticated")
    local p = cli.spawn{ "--url", m.url, "wait", "--timeout", "60" }
    await_requests(m, "/iserver/auth/status", 1)
    p:kill("INT")
    local how, rc, rest, err, secs = p:finish()
    assert.same({ "exit", 130 }, { how, rc })
    assert.is_true(secs < PROMPT, "took " .. secs .. " s")
    assert.equal("", rest)
    assert.matches("wait: interrupted by SIGINT", err)
  end)

  it("keepalive: one line per state change, repairs, a last line after --duration", function()
    local p = cli.spawn{ "--url", m.url, "keepalive", "--interval", "1", "--duration", "60" }
    local first = p:line()
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ ready: authenticated=true", first)
    m:set_state("competing")
    assert.matches(" competing %(was ready%): ", p:line())
    m:set_state("unauthenticated")
    assert.matches(" unauthenticated %(was competing%): ", p:line())
    assert.matches(" ready %(was unauthenticated%): ", p:line()) -- repaired by ssodh/init
    m:set_state("no_session")
    assert.matches(" no_session %(was ready%): .*401", p:line())
    m:login("ready")
    assert.matches(" ready %(was no_session%)", p:line())
    p:kill("TERM")
    local how, rc, rest = p:finish()
    assert.same({ "exit", 143 }, { how, rc })
    assert.matches("stopped by SIGTERM", rest)
  end)

  it("keepalive --json: every line is JSON (states, errors, repairs, the last line)", function()
    m:set_state("competing")
    local rc, out, err = cli.run{ "--url", m.url, "--json", "keepalive", "--interval", "1",
      "--duration", "1.5" }
    assert.equal(1, rc)
    assert.equal("", err)
    local lines = cli.json_lines(out)
    assert.equal("state", lines[1].event)
    assert.equal("competing", lines[1].state)
    assert.is_true(lines[1].detail.competing)
    assert.same({ "stopped", "duration", "competing", 1 },
      { lines[#lines].event, lines[#lines].reason, lines[#lines].state, lines[#lines].exit })
    -- repairs and errors are JSON lines too
    m:set_state("unauthenticated")
    m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 500, count = 1 }
    m:fault{ path = "/tickle", kind = "status", status = 200, body = '{"error":"failed to process request"}',
      count = 1 }
    rc, out, err = cli.run{ "--url", m.url, "--json", "keepalive", "--interval", "1",
      "--retry-interval", "0.3", "--duration", "2" }
    assert.equal(0, rc)
    assert.equal("", err)
    local events = {}
    for _, l in ipairs(cli.json_lines(out)) do
      assert.is_string(l.time)
      events[l.event] = (events[l.event] or 0) + 1
    end
    assert.is_true(events.repair >= 1)
    assert.is_true(events.error >= 1)
    assert.equal(1, events.stopped)
    -- unreachable: "down", exit 2
    rc, out, err = cli.run{ "--url", "http://127.0.0.1:9/v1/api", "keepalive", "--interval", "1",
      "--duration", "3.5" }
    assert.equal(2, rc)
    assert.matches(" down: ibkr: connect: ", out)
    assert.equal("", err) -- the error is said once: in the state line it caused
  end)

  it("keepalive --no-init: tickles only, never ssodh/init", function()
    m:set_state("unauthenticated")
    local rc, out = cli.run{ "--url", m.url, "keepalive", "--no-init", "--interval", "1",
      "--retry-interval", "0.3", "--duration", "1.5" }
    assert.equal(1, rc)
    assert.matches(" unauthenticated: ", out)
    assert.equal(0, #m:api_log("/iserver/auth/ssodh/init"))
    assert.is_true(#m:api_log("/tickle") >= 2)
  end)
end)
