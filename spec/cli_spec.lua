-- ibkr-session as a user runs it: a subprocess against the mock gateway; output and exit codes.
local cjson = require("cjson")
local mock = require("spec.helpers.mock")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Runs bin/ibkr-session with the arguments; returns exit code, stdout, stderr.
local function run(args, env)
  local errfile = os.tmpname()
  local cmd = (env or "") .. " bin/ibkr-session"
  for _, a in ipairs(args) do cmd = cmd .. " " .. q(a) end
  local p = assert(io.popen(cmd .. " 2>" .. errfile .. " </dev/null; echo \"rc=$?\""))
  local out = p:read("a")
  p:close()
  local f = assert(io.open(errfile))
  local err = f:read("a")
  f:close()
  os.remove(errfile)
  local body, rc = out:match("^(.-)rc=(%d+)\n$")
  return tonumber(rc), body, err
end

describe("ibkr-session", function()
  local m
  setup(function() m = assert(mock.start{ tls = true, pacing = false, init_delay = 0, reauth_delay = 0 }) end)
  teardown(function() m:stop() end)
  before_each(function()
    m:reset()
    m:clear_faults()
    m:config{ init_delay = 0, reauth_delay = 0 }
  end)

  it("status: exit 0 and 'ready' for a ready session", function()
    local rc, out = run{ "--url", m.url, "status" }
    assert.equal(0, rc)
    assert.matches("^ready %(authenticated=true connected=true competing=false", out)
  end)

  it("status: exit 1 for every state that is not ready, with the state named", function()
    for _, st in ipairs{ "competing", "unauthenticated", "disconnected", "no_session" } do
      m:set_state(st)
      local rc, out = run{ "--url", m.url, "status" }
      assert.equal(1, rc, st)
      assert.matches("^" .. st .. " ", out)
      local rc2, js = run{ "--url", m.url, "--json", "status" }
      assert.equal(1, rc2)
      local doc = cjson.decode(js)
      assert.equal(st, doc.state)
      assert.is_false(doc.ok)
    end
  end)

  it("status --json: one JSON document with state and result", function()
    local rc, out = run{ "--json", "--url", m.url, "status" }
    assert.equal(0, rc)
    local doc = cjson.decode(out)
    assert.equal("ready", doc.state)
    assert.is_true(doc.ok)
    assert.is_true(doc.result.authenticated)
    assert.equal("status", doc.command)
  end)

  it("exit 2 when the gateway is unreachable, in both output modes", function()
    local rc, out, err = run{ "--url", "http://127.0.0.1:9/v1/api", "status" }
    assert.equal(2, rc)
    assert.matches("^down ", out)
    local rc2, js = run{ "--url", "http://127.0.0.1:9/v1/api", "--json", "tickle" }
    assert.equal(2, rc2)
    assert.equal("connect", cjson.decode(js).error.kind)
    assert.equal("", err)
  end)

  it("exit 2 on a TLS failure (--cacert that does not sign the gateway's certificate)", function()
    local ca = "/etc/ssl/certs/ca-certificates.crt"
    local rc, out = run{ "--url", m.url, "--cacert", ca, "--json", "status" }
    assert.equal(2, rc)
    assert.equal("tls", cjson.decode(out).error.kind)
    assert.equal(0, (run{ "--url", m.url, "--insecure", "status" }))
  end)

  it("takes the URL from $IBKR_BASE_URL", function()
    local rc, out = run({ "status" }, "IBKR_BASE_URL=" .. q(m.url))
    assert.equal(0, rc)
    assert.matches("^ready", out)
  end)

  it("runs every command", function()
    local rc, out = run{ "--url", m.url, "tickle" }
    assert.equal(0, rc)
    assert.matches("^tickle ok: ready, session %x+", out)
    rc, out = run{ "--url", m.url, "validate" }
    assert.equal(0, rc)
    assert.matches("^validate ok: user ", out)
    rc, out = run{ "--url", m.url, "--json", "validate" }
    assert.equal(0, rc)
    assert.matches('"USER_ID":%d+[,}]', out)  -- printed as an integer, not 1.23e+08
    assert.matches('"AUTH_TIME":%d+[,}]', out)
    rc, out = run{ "--url", m.url, "reauthenticate" }
    assert.equal(0, rc)
    assert.equal("reauthenticate: triggered\n", out)
    m:set_state("competing")
    rc, out = run{ "--url", m.url, "init" }
    assert.equal(1, rc) -- without --compete the other session keeps the brokerage session
    assert.matches("^competing", out)
    rc, out = run{ "--url", m.url, "init", "--compete" }
    assert.equal(0, rc)
    assert.matches("^ready", out)
    rc, out = run{ "--url", m.url, "logout" }
    assert.equal(0, rc)
    assert.equal("logged out\n", out)
    rc = run{ "--url", m.url, "tickle" }
    assert.equal(1, rc)
    rc, out = run{ "--url", m.url, "--json", "tickle" }
    assert.equal(1, rc)
    assert.equal(401, cjson.decode(out).error.status)
  end)

  it("exit 1 when a call fails with an HTTP error", function()
    m:fault{ path = "/logout", kind = "status", status = 500 }
    local rc, out, err = run{ "--url", m.url, "logout" }
    assert.equal(1, rc)
    assert.equal("", out)
    assert.matches("HTTP 500", err)
  end)

  it("exit 64 on usage errors", function()
    local cases = {
      {}, { "bogus" }, { "--bogus", "status" }, { "status", "extra" }, { "--url" },
      { "--insecure", "--cacert", "x.pem", "status" }, { "--timeout", "abc", "status" },
      { "--timeout", "0", "status" }, { "status", "--interval", "5" }, { "tickle", "--compete" },
      { "--url", "ftp://x", "status" }, { "--url", "https:///v1/api", "status" },
      { "keepalive", "--duration", "-1" },
    }
    for _, args in ipairs(cases) do
      local rc, out, err = run(args)
      assert.equal(64, rc, table.concat(args, " "))
      assert.equal("", out)
      assert.matches("usage: ibkr%-session", err)
    end
    local rc, out = run{ "--help" }
    assert.equal(0, rc)
    assert.matches("keepalive", out)
  end)

  it("keepalive: one line per state change, repairs, ends after --duration", function()
    local cmd = "echo $$; exec bin/ibkr-session --url " .. q(m.url)
      .. " keepalive --interval 1 --duration 60 2>/dev/null"
    local p = assert(io.popen(cmd))
    local pid = assert(math.tointeger(tonumber(p:read("l"))))
    local first = p:read("l")
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ ready: authenticated=true", first)
    m:set_state("competing")
    assert.matches(" competing %(was ready%): ", p:read("l"))
    m:set_state("unauthenticated")
    assert.matches(" unauthenticated %(was competing%): ", p:read("l"))
    assert.matches(" ready %(was unauthenticated%): ", p:read("l")) -- repaired by ssodh/init
    m:set_state("no_session")
    assert.matches(" no_session %(was ready%): .*401", p:read("l"))
    m:login("ready")
    assert.matches(" ready %(was no_session%)", p:read("l"))
    os.execute("kill -TERM " .. pid)   -- runs until a signal: it ends at once, saying nothing more
    assert.is_nil(p:read("l"))
    local _, how, code = p:close()
    assert.same({ "signal", 15 }, { how, code })
  end)

  it("keepalive --json: one JSON object per line; exit by --duration with the last state's code", function()
    m:set_state("competing")
    local rc, out = run{ "--url", m.url, "--json", "keepalive", "--interval", "1", "--duration", "1.5" }
    assert.equal(1, rc)
    local lines = {}
    for line in out:gmatch("[^\n]+") do lines[#lines + 1] = cjson.decode(line) end
    assert.equal(1, #lines)
    assert.equal("competing", lines[1].state)
    assert.is_true(lines[1].detail.competing)
    m:set_state("ready")
    rc = run{ "--url", m.url, "keepalive", "--interval", "1", "--duration", "1.2" }
    assert.equal(0, rc)
    -- unreachable: the tickle and its two retries (one per second: tickle pacing) fail, then "down"
    rc, out = run{ "--url", "http://127.0.0.1:9/v1/api", "keepalive", "--interval", "1", "--duration", "3.5" }
    assert.equal(2, rc)
    assert.matches(" down: ibkr: connect: ", out)
  end)
end)
