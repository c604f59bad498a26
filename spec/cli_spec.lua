-- ibkr-session as a user runs it: a subprocess against the mock gateway; output and exit codes,
-- hints, JSON lines. (Usage errors, --help, --version: cli_usage_spec.lua; signals and time
-- bounds: cli_bounds_spec.lua; judged answers and printable lines: cli_answers_spec.lua.)
local cjson = require("cjson")
local mock = require("spec.helpers.mock")
local cli = require("spec.helpers.cli")
local run, q = cli.run, cli.q

-- a --timeout for `wait` that must end on the state it saw, not on "no answer in time": long
-- enough for a process start and a TLS handshake on a loaded machine (longer under ASan)
local WAIT = tostring(3 * cli.SCALE)

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
    local rc, out, err = run{ "--url", m.url, "status" }
    assert.equal(0, rc)
    assert.matches("^ready %(authenticated=true connected=true competing=false", out)
    assert.equal("", err)
  end)

  it("status: exit 1 for a state that is not ready, 3 when a login is needed; a hint", function()
    local want = { competing = 1, unauthenticated = 1, disconnected = 1, no_session = 3 }
    for st, code in pairs(want) do
      m:set_state(st)
      local rc, out, err = run{ "--url", m.url, "status" }
      assert.equal(code, rc, st)
      assert.matches("^" .. st .. " ", out)
      assert.matches("^hint: ", err)
      local rc2, js, err2 = run{ "--url", m.url, "--json", "status" }
      assert.equal(code, rc2)
      local doc = cjson.decode(js)
      assert.equal(st, doc.state)
      assert.is_false(doc.ok)
      assert.equal(code, doc.exit)
      assert.is_string(doc.hint)
      assert.equal("", err2)
    end
  end)

  it("no_session: says a browser login is needed, and where (the gateway's root URL)", function()
    m:set_state("no_session")
    local root = m.url:gsub("/v1/api$", "/")
    for _, cmd in ipairs{ "status", "tickle", "init", "validate", "wait" } do
      local rc, _, err = run{ "--url", m.url, "--timeout", "3", cmd }
      assert.equal(3, rc, cmd)
      assert.matches("login required: open " .. root:gsub("%p", "%%%0") .. " in a browser", err, nil, cmd)
    end
  end)

  it("status --json: one JSON document with state and result", function()
    local rc, out = run{ "--json", "--url", m.url, "status" }
    assert.equal(0, rc)
    local doc = cjson.decode(out)
    assert.equal("ready", doc.state)
    assert.is_true(doc.ok)
    assert.equal(0, doc.exit)
    assert.is_true(doc.result.authenticated)
    assert.equal("status", doc.command)
  end)

  it("exit 2 when the gateway is unreachable; the error once, with a hint; JSON: one line", function()
    local url = "http://127.0.0.1:9/v1/api"
    local rc, out, err = run{ "--url", url, "status" }
    assert.equal(2, rc)
    assert.matches("^down %(ibkr: connect: ", out)
    assert.matches("^hint: nothing answers at 127%.0%.0%.1:9", err)
    rc, out, err = run{ "--url", url, "tickle" }
    assert.equal(2, rc)
    assert.equal("", out)
    local _, n = err:gsub("connect:", "")
    assert.equal(1, n) -- said once
    assert.matches("^ibkr%-session: tickle: ibkr: connect: .*\nhint: ", err)
    local rc2, js, err2 = run{ "--url", url, "--json", "tickle" }
    assert.equal(2, rc2)
    local lines = cli.json_lines(js)
    assert.equal(1, #lines)
    assert.equal("connect", lines[1].error.kind)
    assert.equal("down", lines[1].state)
    assert.equal("", err2)
  end)

  it("TLS refused: exit 2, reported as a TLS problem with the fix (--cacert FILE or --insecure)", function()
    local ca = "/etc/ssl/certs/ca-certificates.crt" -- real CAs: none signed the mock's certificate
    local rc, out, err = run{ "--url", m.url, "--cacert", ca, "status" }
    assert.equal(2, rc)
    assert.matches("^tls ", out)
    assert.matches("hint: TLS: the gateway's certificate is not signed by " .. ca:gsub("%p", "%%%0"), err)
    assert.matches("%-%-cacert FILE", err)
    assert.matches("%-k/%-%-insecure", err)
    rc, out = run{ "--url", m.url, "--cacert", ca, "--json", "tickle" }
    assert.equal(2, rc)
    local doc = cjson.decode(out)
    assert.equal("tls", doc.error.kind)
    assert.equal("tls", doc.state)
    assert.matches("%-%-insecure", doc.hint)
    -- a CA file that does not exist
    rc, out, err = run{ "--url", m.url, "--cacert", "/nonexistent/ca.pem", "status" }
    assert.matches("^tls ", out)
    assert.equal(2, rc)
    assert.matches("hint: TLS: cannot use the CA file /nonexistent/ca%.pem", err)
    assert.equal(0, (run{ "--url", m.url, "--insecure", "status" }))
    assert.equal(0, (run{ "--url", m.url, "-k", "status" }))
  end)

  -- A name for 127.0.0.1 that is not "localhost" (like a compose service name): verification is
  -- on for it, and the mock's self-signed certificate is refused.
  local function other_loopback_name()
    local f = io.open("/etc/hosts")
    if not f then return nil end
    for line in f:lines() do
      local addr, names = line:match("^%s*(127%.[%d.]+)%s+([^#]+)")
      for name in (names or ""):gmatch("%S+") do
        if addr and not name:lower():match("^localhost") then f:close() return name end
      end
    end
    f:close()
  end

  it("TLS refused for a self-signed gateway reached by a non-loopback name: the hint has the fix", function()
    local name = other_loopback_name()
    if not name then return pending("no other name for 127.0.0.1 in /etc/hosts") end
    local url = m.url:gsub("127%.0%.0%.1", name)
    local rc, out, err = run{ "--url", url, "status" }
    assert.equal(2, rc)
    assert.matches("^tls ", out)
    assert.matches("hint: TLS: the gateway's certificate was refused .*%-%-cacert FILE.*%-k/%-%-insecure",
      err)
    assert.equal(0, (run{ "--url", url, "-k", "status" }))
  end)

  it("TLS: a certificate that does not name the host is reported as such, even with --cacert", function()
    local name = other_loopback_name()
    if not name then return pending("no other name for 127.0.0.1 in /etc/hosts") end
    local d = os.tmpname()
    os.remove(d)
    assert(os.execute("mkdir -p " .. q(d) .. " && openssl req -x509 -newkey ec -pkeyopt "
      .. "ec_paramgen_curve:prime256v1 -nodes -keyout " .. q(d .. "/key.pem") .. " -out "
      .. q(d .. "/cert.pem") .. " -days 2 -subj /CN=localhost "
      .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1"))
    local gw = assert(mock.start{ tls = true, pacing = false,
      args = { "--cert", d .. "/cert.pem", "--key", d .. "/key.pem" } })
    local url = gw.url:gsub("127%.0%.0%.1", name)
    local rc, out, err = run{ "--url", url, "--cacert", d .. "/cert.pem", "status" }
    local rc_ok = run{ "--url", gw.url, "--cacert", d .. "/cert.pem", "status" }
    gw:stop()
    os.execute("rm -rf " .. q(d))
    assert.equal(2, rc)
    assert.matches("^tls ", out)
    assert.matches("hint: TLS: the gateway's certificate does not name the host " .. name:gsub("%p", "%%%0")
      .. ": .*%-k/%-%-insecure", err)
    assert.not_matches("not signed by", err)
    assert.equal(0, rc_ok) -- the same CA file is right for a name the certificate lists
  end)

  it("TLS: the wrong-name hint names the host without its port, and what the certificate names only "
    .. "when libcurl says it", function()
    local d = os.tmpname()
    os.remove(d)
    finally(function() os.execute("rm -rf " .. q(d)) end)
    -- gw.example by subjectAltName (libcurl then names no subject), or by its subject alone
    local certs = { san = "-addext subjectAltName=DNS:gw.example", cn = "" }
    local said = {}
    for kind, ext in pairs(certs) do
      local dir = d .. "/" .. kind
      assert(os.execute("mkdir -p " .. q(dir) .. " && openssl req -x509 -newkey ec -pkeyopt "
        .. "ec_paramgen_curve:prime256v1 -nodes -keyout " .. q(dir .. "/key.pem") .. " -out "
        .. q(dir .. "/cert.pem") .. " -days 2 -subj /CN=gw.example " .. ext .. " >/dev/null 2>&1"))
      local gw = assert(mock.start{ tls = true, pacing = false,
        args = { "--cert", dir .. "/cert.pem", "--key", dir .. "/key.pem" } })
      local rc, _, err = run{ "--url", gw.url, "--cacert", dir .. "/cert.pem", "status" }
      gw:stop()
      assert.equal(2, rc)
      said[kind] = err
      assert.matches("hint: TLS: the gateway's certificate does not name the host 127%.0%.0%.1[: ]", err)
      assert.not_matches("127%.0%.0%.1:%d", err:match("hint: [^\n]*"))
      assert.not_matches("localhost", err:match("hint: [^\n]*"))
    end
    assert.not_matches("it names", said.san:match("hint: [^\n]*"))
    assert.matches("host 127%.0%.0%.1 %(it names gw%.example%): reach it by a name", said.cn)
  end)

  it("hints: a URL without /v1/api, http against an https gateway, https against an http one", function()
    local rc, _, err = run{ "--url", m.root, "tickle" }
    assert.equal(1, rc)
    assert.matches("hint: the URL has no /v1/api", err)
    local http_url = m.url:gsub("^https:", "http:")
    rc, _, err = run{ "--url", http_url, "--retries", "0", "tickle" }
    assert.is_true(rc == 1 or rc == 2)
    assert.matches("hint: the gateway may speak HTTPS.*https://127%.0%.0%.1:%d+/v1/api", err)
    local plain = assert(mock.start{ tls = false, pacing = false })
    rc, _, err = run{ "--url", plain.url:gsub("^http:", "https:"), "tickle" }
    plain:stop()
    assert.equal(2, rc)
    assert.matches("hint: TLS: the server does not speak TLS here", err)
  end)

  it("takes the URL from $IBKR_BASE_URL; a bad one is a usage error naming the variable", function()
    local rc, out = run({ "status" }, "IBKR_BASE_URL=" .. q(m.url))
    assert.equal(0, rc)
    assert.matches("^ready", out)
    local err
    rc, out, err = run({ "status" }, "IBKR_BASE_URL=ftp://x/v1/api")
    assert.equal(64, rc)
    assert.equal("", out)
    assert.matches("%$IBKR_BASE_URL %(ftp://x/v1/api%)", err)
    rc, out, err = run({ "status" }, "IBKR_BASE_URL=http://127.0.0.1:9/v1/api")
    assert.matches("^down", out)
    assert.equal(2, rc)
    assert.matches("%(%$IBKR_BASE_URL%)", err)
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
    assert.matches("^reauthenticate: triggered %(asynchronous", out)
    m:set_state("competing")
    rc, out = run{ "--url", m.url, "init" }
    assert.equal(1, rc) -- without --compete the other session keeps the brokerage session
    assert.matches("^competing", out)
    rc, out = run{ "--url", m.url, "init", "--compete" }
    assert.equal(0, rc)
    assert.matches("^ready", out)
    -- a takeover the gateway has not finished when it answers: accepted, pending (exit 0)
    m:set_state("competing")
    m:config{ init_delay = 1 }
    rc, out = run{ "--url", m.url, "init", "--compete" }
    assert.equal(0, rc, out)
    assert.matches("^init accepted, pending: the gateway takes the brokerage session over", out)
    rc, out = run{ "--url", m.url, "wait", "--timeout", "20" }
    assert.equal(0, rc, out)
    m:config{ init_delay = 0 }
    rc, out = run{ "--url", m.url, "logout" }
    assert.equal(0, rc)
    assert.equal("logged out\n", out)
    rc = run{ "--url", m.url, "tickle" }
    assert.equal(3, rc)
    rc, out = run{ "--url", m.url, "--json", "tickle" }
    assert.equal(3, rc)
    assert.equal(401, cjson.decode(out).error.status)
  end)

  it("init on an unauthenticated session: exit 0, the change is pending; wait waits for ready", function()
    m:config{ init_delay = 3600 } -- pending for as long as the two inits below take
    m:set_state("unauthenticated")
    local rc, out = run{ "--url", m.url, "init" }
    assert.equal(0, rc)
    assert.matches("^init accepted, pending: .*ibkr%-session wait", out)
    local js
    rc, js = run{ "--url", m.url, "--json", "init" }
    assert.equal(0, rc)
    local doc = cjson.decode(js)
    assert.is_true(doc.ok)
    assert.is_true(doc.pending)
    assert.equal("unauthenticated", doc.state)
    m:config{ init_delay = 1 }
    local again = assert(m:request("POST", "/v1/api/iserver/auth/ssodh/init", -- ready 1 s from now
      { body = '{"publish":true}', headers = { ["Content-Type"] = "application/json" } }))
    assert.equal(200, again.status)
    rc, out = run{ "--url", m.url, "wait", "--timeout", "20" }
    assert.equal(0, rc)
    assert.matches("^ready %(authenticated=true", out)
    -- wait --init repairs an unauthenticated session itself
    m:set_state("unauthenticated")
    rc, out = run{ "--url", m.url, "wait", "--init", "--timeout", "20" }
    assert.equal(0, rc)
    assert.matches("^ready", out)
  end)

  it("wait --init takes a competing session over only with --compete", function()
    m:set_state("competing")
    m:clear_log()
    -- (the time left must see one answer: a process start and a TLS handshake on a loaded machine)
    local rc, _, err = run{ "--url", m.url, "wait", "--init", "--timeout", WAIT }
    assert.equal(1, rc)
    assert.matches("state: competing", err)
    assert.equal(0, #m:api_log("/iserver/auth/ssodh/init"))
    local out
    rc, out = run{ "--url", m.url, "wait", "--init", "--compete", "--timeout", "20" }
    assert.equal(0, rc)
    assert.matches("^ready", out)
    local log = m:api_log("/iserver/auth/ssodh/init")
    assert.is_true(#log >= 1)
    assert.is_true(cjson.decode(log[1].body).compete)
  end)

  it("wait: the state's exit code when the time runs out", function()
    m:set_state("unauthenticated")
    local rc, out, err = run{ "--url", m.url, "wait", "--timeout", WAIT }
    assert.equal(1, rc) -- without --init nothing opens the brokerage session
    assert.equal("", out)
    assert.matches("wait: session not ready after " .. WAIT .. " s %(state: unauthenticated%)", err)
    local js
    rc, js = run{ "--url", m.url, "--json", "wait", "--timeout", WAIT }
    assert.equal(1, rc)
    local doc = cjson.decode(js)
    assert.equal("unauthenticated", doc.state)
    assert.equal(1, doc.exit)
    rc = run{ "--url", "http://127.0.0.1:9/v1/api", "wait", "--timeout", "1" }
    assert.equal(2, rc)
  end)

  it("request METHOD PATH [--data JSON]: any call; the JSON answer; the body sent as given", function()
    local rc, out = run{ "--url", m.url, "request", "GET", "/sso/validate" }
    assert.equal(0, rc)
    assert.matches('"RESULT":true', out)
    m:set_state("unauthenticated")
    m:clear_log()
    rc, out = run{ "--url", m.url, "--json", "request", "post", "/iserver/auth/ssodh/init",
      "--data", '{"publish":true,"compete":true}' }
    assert.equal(0, rc)
    local doc = cjson.decode(out)
    assert.equal("POST", doc.method)
    assert.equal(200, doc.status)
    local log = m:api_log("/iserver/auth/ssodh/init")
    assert.equal(1, #log)
    assert.same({ publish = true, compete = true }, cjson.decode(log[1].body))
    rc = run{ "--url", m.url, "request", "GET", "/no/such/endpoint" }
    assert.equal(1, rc)
  end)

  it("exit 1 when a call fails with an HTTP error", function()
    m:fault{ path = "/logout", kind = "status", status = 500 }
    local rc, out, err = run{ "--url", m.url, "logout" }
    assert.equal(1, rc)
    assert.equal("", out)
    assert.matches("HTTP 500", err)
  end)
end)

describe("ibkr-session --proxy", function()
  local core = require("ibkr.core")
  -- ibkr.core reads the `proxy` option when it checks its type
  local supported = not pcall(core.new, { base_url = "http://127.0.0.1:1/v1/api", proxy = 5 })

  local function start_proxy()
    local p = assert(io.popen("echo $$; exec lua5.4 spec/helpers/fake_proxy.lua"))
    local pid = assert(p:read("l"))
    local port = assert(math.tointeger(tonumber(p:read("l"))))
    return { port = port, url = "http://127.0.0.1:" .. port,
      stop = function()
        os.execute("kill " .. pid)
        local rest = p:read("a")
        p:close()
        return rest
      end }
  end

  it("sends the requests through the proxy given", function()
    if not supported then return pending("ibkr.core has no proxy option yet (engine branch)") end
    local proxy = start_proxy()
    local rc, out = run{ "--proxy", proxy.url, "--url", "http://gateway.invalid:5000/v1/api", "status" }
    local seen = proxy.stop()
    assert.equal(0, rc)
    assert.matches("^ready", out)
    assert.matches("^POST http://gateway%.invalid:5000/v1/api/iserver/auth/status HTTP/1%.1\n", seen)
  end)

  it("a proxy that does not answer is named in the hint, not the gateway", function()
    if not supported then return pending("ibkr.core has no proxy option yet (engine branch)") end
    local m = assert(mock.start{ tls = false, pacing = false })
    local rc, out, err = run{ "--proxy", "http://bob:pr0xy#secret@127.0.0.1:1", "--url", m.url,
      "--retries", "0", "status" }
    m:stop()
    assert.equal(2, rc)
    assert.matches("^down", out)
    assert.matches("hint: nothing answers through the proxy http://127%.0%.0%.1:1", err)
    assert.not_matches("pr0xy", out .. err)
    assert.not_matches("secret", out .. err)
    assert.not_matches("is the gateway running", err)
  end)

  it("never uses an environment proxy for a loopback gateway", function()
    if not supported then return pending("ibkr.core has no proxy option yet (engine branch)") end
    local m = assert(mock.start{ tls = false, pacing = false })
    local proxy = start_proxy()
    local env = ""
    for _, v in ipairs{ "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY" } do
      env = env .. v .. "=" .. proxy.url .. " "
    end
    local rc = run({ "--url", m.url, "status" }, env)
    local seen = proxy.stop()
    m:stop()
    assert.equal(0, rc)
    assert.equal("", seen)
  end)
end)
