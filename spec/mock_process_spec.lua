-- The mock gateway as a process: command line, start-up, certificates, shutdown; and the
-- in-process API (ibkr.mock.new).
local cjson = require("cjson")
local socket = require("socket")
local mock = require("spec.helpers.mock")

local has_luv = pcall(require, "luv")

-- Runs the command with args; returns exit code, stdout, stderr.
local function run(args)
  local out, err = os.tmpname(), os.tmpname()
  local quoted = {}
  for i, a in ipairs(args) do
    quoted[i] = mock.shell_quote(a)
  end
  local ok, how, code = os.execute(mock.command .. " " .. table.concat(quoted, " ")
    .. " >" .. out .. " 2>" .. err .. " </dev/null")
  local function slurp(name)
    local f = io.open(name, "r")
    local s = f:read("a")
    f:close()
    os.remove(name)
    return s
  end
  assert.equals("exit", how, tostring(ok))
  return code, slurp(out), slurp(err)
end

local function port_open(host, port)
  local c = socket.tcp()
  c:settimeout(2)
  local ok = c:connect(host, port)
  c:close()
  return ok ~= nil
end

describe("ibkr-mock-gateway command", function()
  it("exits 64 with a message on stderr for bad usage", function()
    for _, args in ipairs({ { "--bogus" }, { "--port" }, { "--port", "abc" }, { "--port", "70000" },
      { "--state", "sleepy" }, { "--idle-timeout", "-1" }, { "--cert", "x.pem" },
      { "--no-tls", "--cert", "a", "--key", "b" }, { "extra" } }) do
      local code, out, err = run(args)
      assert.equals(64, code, table.concat(args, " "))
      assert.equals("", out)
      assert.matches("^ibkr%-mock%-gateway: ", err)
    end
  end)

  it("prints usage for --help and the version for --version", function()
    local code, out = run({ "--help" })
    assert.equals(0, code)
    assert.matches("Usage: ibkr%-mock%-gateway", out)
    assert.matches("--idle-timeout", out, 1, true)
    code, out = run({ "--version" })
    assert.equals(0, code)
    assert.matches("^ibkr%-mock%-gateway %d+%.%d+%.%d+\n$", out)
  end)

  it("exits 1 when it cannot listen", function()
    local m = assert(mock.start({ tls = false }))
    local code, out, err = run({ "--no-tls", "--port", tostring(m.port) })
    assert.equals(1, code)
    assert.equals("", out)
    assert.matches("cannot listen", err)
    m:stop()
  end)

  it("starts with TLS and prints only the URL", function()
    -- (how long it takes to start is a figure of make bench: bench/timing.lua)
    local m = assert(mock.start())
    assert.matches("^https://127%.0%.0%.1:%d+/v1/api$", m.url)
    m:stop()
    assert.equals("", m.stdout_rest)
    assert.equals("", m:stderr())
  end)

  it("uses a fresh self-signed certificate for localhost and 127.0.0.1", function()
    local m = assert(mock.start())
    local c = assert(m:connect())
    local cert = c.sock:getpeercertificate()
    local cn
    for _, e in ipairs(cert:subject()) do
      if e.name == "commonName" then
        cn = e.value
      end
    end
    assert.equals("localhost", cn)
    local text = cert:pem()
    c:close()
    local exts = cert:extensions()
    local san = exts["2.5.29.17"]
    assert.is_table(san)
    assert.same({ "localhost" }, san.dNSName)
    assert.truthy(table.concat(san.iPAddress, ","):find("127.0.0.1", 1, true))
    local m2 = assert(mock.start())
    local c2 = assert(m2:connect())
    assert.are_not.equal(text, c2.sock:getpeercertificate():pem())
    c2:close()
    m2:stop()
    m:stop()
  end)

  it("serves with a given --cert and --key", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
    assert(os.execute("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -keyout " .. dir .. "/k.pem -out " .. dir .. "/c.pem -days 1 -subj /CN=spec-cert >/dev/null 2>&1"))
    local m = assert(mock.start({ args = { "--cert", dir .. "/c.pem", "--key", dir .. "/k.pem" } }))
    local c = assert(m:connect())
    local cn
    for _, e in ipairs(c.sock:getpeercertificate():subject()) do
      if e.name == "commonName" then
        cn = e.value
      end
    end
    assert.equals("spec-cert", cn)
    assert.equals(200, assert(c:request("GET", "/v1/api/sso/validate")).status)
    c:close()
    m:stop()
    os.execute("rm -rf " .. dir)
  end)

  it("exits 1 when --cert/--key cannot be loaded", function()
    local code, _, err = run({ "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/k.pem" })
    assert.equals(1, code)
    assert.matches("certificate", err)
  end)

  it("starts in the state given by --state and honours --idle-timeout and --no-pacing", function()
    local m = assert(mock.start({ tls = false, state = "competing", idle_timeout = 7, pacing = false }))
    local st = m:state()
    assert.equals("competing", st.state)
    assert.equals(7, st.config.idle_timeout)
    assert.is_false(st.config.pacing)
    m:stop()
  end)

  for _, sig in ipairs({ "TERM", "INT" }) do
    it("shuts down on SIG" .. sig .. ": the process ends and the port is released", function()
      local m = assert(mock.start({ tls = false }))
      local c = assert(m:connect()) -- an open keep-alive connection does not hold it up
      assert.equals(200, assert(c:request("GET", "/v1/api/sso/validate")).status)
      assert.is_true(port_open(m.host, m.port))
      local how, code = m:stop(sig)
      if has_luv then
        assert.equals("exit", how)
        assert.equals(0, code)
      else
        assert.equals("signal", how)
      end
      assert.is_false(port_open(m.host, m.port))
      assert.is_true(c:is_closed())
      c:close()
      assert.equals("", m.stdout_rest)
      assert.equals("", m:stderr())
    end)
  end

  it("shuts down on POST /__mock/shutdown with exit code 0", function()
    local m = assert(mock.start({ tls = true }))
    local r = assert(m:request("POST", "/__mock/shutdown"))
    assert.equals(200, r.status)
    assert.is_true(m:wait_exit(5))
    local how, code = m:reap()
    assert.equals("exit", how)
    assert.equals(0, code)
    assert.is_false(port_open(m.host, m.port))
  end)

  it("exits when the process given by --parent-pid is gone", function()
    local p = io.popen("echo $$; exec sleep 30")
    local ppid = p:read("l")
    local m = assert(mock.start({ tls = false, parent_pid = false, args = { "--parent-pid", ppid } }))
    assert.equals("ready", m:state().state)
    os.execute("kill " .. ppid)
    p:close()
    -- docs/testing.md: gone within a second of its parent (0.5 s of slack for a loaded machine)
    assert.is_true(m:wait_exit(1.5))
    local how, code = m:reap()
    assert.equals("exit", how)
    assert.equals(0, code)
  end)

  it("logs requests to stderr with --verbose", function()
    local m = assert(mock.start({ tls = false, verbose = true }))
    assert(m:request("POST", "/v1/api/tickle"))
    m:stop()
    assert.matches("POST /v1/api/tickle", m:stderr(), 1, true)
  end)
end)

describe("ibkr.mock in-process", function()
  local ibkr_mock = require("ibkr.mock")

  it("serves from mock.new() driven by step()", function()
    local m = assert(ibkr_mock.new({ tls = false, state = "unauthenticated" }))
    assert.matches("^http://127%.0%.0%.1:%d+/v1/api$", m.url)
    local c = assert(socket.connect("127.0.0.1", m.port))
    c:settimeout(0)
    assert(c:send("POST /v1/api/iserver/auth/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    local got = {}
    local deadline = socket.gettime() + 5
    while socket.gettime() < deadline do
      assert.is_true(m:step(0.05))
      local data, err, partial = c:receive(4096)
      got[#got + 1] = data or partial
      if err == "closed" then
        break
      end
    end
    c:close()
    m:close()
    m:close() -- idempotent
    local text = table.concat(got)
    assert.matches("^HTTP/1.1 200 OK\r\n", text)
    local body = text:match("\r\n\r\n(.*)$")
    assert.is_false(cjson.decode(body).authenticated)
  end)

  it("raises on unknown or ill-typed options, naming them", function()
    for _, case in ipairs({
      { { state = "nope" }, "unknown state nope" },
      { { init_dealy = 0 }, "unknown option init_dealy" },
      { { tls = "no" }, "option tls must be a boolean" },
      { { port = 1.5 }, "port must be an integer" },
      { { init_delay = -1 }, "bad value for init_delay" },
      { { config = { pacing = 1 } }, "bad value for pacing" },
      { { cert = "x.pem" }, "cert and key go together" },
    }) do
      local ok, err = pcall(ibkr_mock.new, case[1])
      assert.is_false(ok)
      assert.matches(case[2], err, 1, true)
    end
  end)

  it("takes gateway and server settings flat or grouped; m:stop() ends m:run()", function()
    local m = assert(ibkr_mock.new({ tls = false, init_delay = 0, head_timeout = 2,
      config = { pacing = false }, server = { keepalive_timeout = 3 } }))
    assert.equals(0, m.gateway.config.init_delay)
    assert.is_false(m.gateway.config.pacing)
    assert.equals(2, m.server.head_timeout)
    assert.equals(3, m.server.keepalive_timeout)
    m:stop()
    assert.is_true(m:run())
    assert.is_false(m:step(0))
  end)

  it("serves the control API in process with m:control()", function()
    local m = assert(ibkr_mock.new({ tls = false }))
    assert.equals("ready", m:control("GET", "/__mock/state").state)
    m:control("POST", "/__mock/state", { state = "competing" })
    m:control("POST", "/__mock/fault", { path = "/tickle", kind = "empty" })
    assert.equals(1, #m:control("GET", "/__mock/fault").faults)
    local ok, err = pcall(m.control, m, "POST", "/__mock/fault", { kind = "nope" })
    assert.is_false(ok)
    assert.matches("400", err)
    local c = assert(socket.connect("127.0.0.1", m.port))
    c:settimeout(0)
    assert(c:send("POST /v1/api/iserver/auth/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    local got = {}
    repeat
      m:step(0.05)
      local data, rerr, partial = c:receive(4096)
      got[#got + 1] = data or partial
    until rerr == "closed"
    c:close()
    assert.is_true(cjson.decode(table.concat(got):match("\r\n\r\n(.*)$")).competing)
    m:close()
  end)

  it("returns nil, err when it cannot listen", function()
    local a = assert(ibkr_mock.new({ tls = false }))
    local b, err = ibkr_mock.new({ tls = false, port = a.port })
    assert.is_nil(b)
    assert.matches("cannot listen", err)
    a:close()
  end)

  it("parses the command line", function()
    local o = assert(ibkr_mock.parse_args({ "--port=8080", "--no-tls", "--init-delay", "0", "--no-pacing" }))
    assert.equals(8080, o.port)
    assert.is_false(o.tls)
    assert.equals(0, o.config.init_delay)
    assert.is_false(o.config.pacing)
    local bad, err = ibkr_mock.parse_args({ "--port", "-3" })
    assert.is_nil(bad)
    assert.matches("%-%-port", err)
  end)
end)
