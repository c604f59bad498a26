-- A hint names the cause the evidence shows, or none: the status, the body's words, the TLS code,
-- the endpoint, the URL — in one place (ibkr/kinds.lua), the same for ibkr-session's "hint:" line
-- and the Lua API's err.hint. Against the mock gateway (with a really expired certificate made
-- with openssl) and ibkr-session as a process.
local ibkr = require("ibkr")
local mock = require("spec.helpers.mock")
local cli = require("spec.helpers.cli")
local q = require("spec.helpers.raw").q

-- the openssl command line, without the sanitizer preload of `make asan`
local function sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD sh -c " .. q(cmd) .. " 2>&1", "r"))
  local out = p:read("a")
  local ok = p:close()
  assert(ok, out)
  return out
end

-- A self-signed certificate for localhost/127.0.0.1, valid only in January 2020 (openssl ca takes
-- a start and end date; faketime is not needed). Returns the directory with cert.pem and key.pem.
local function expired_certificate()
  local d = os.tmpname()
  os.remove(d)
  sh("mkdir -p " .. q(d .. "/db") .. " && touch " .. q(d .. "/db/index.txt") .. " && echo 01 > "
    .. q(d .. "/db/serial"))
  local f = assert(io.open(d .. "/ca.cnf", "w"))
  f:write(table.concat({
    "[ca]", "default_ca = c", "[c]", "database = " .. d .. "/db/index.txt", "serial = " .. d .. "/db/serial",
    "new_certs_dir = " .. d .. "/db", "default_md = sha256", "policy = p", "x509_extensions = ext",
    "[p]", "commonName = supplied",
    "[ext]", "subjectAltName = DNS:localhost,IP:127.0.0.1", "basicConstraints = critical,CA:true", "",
  }, "\n"))
  f:close()
  sh(string.format("cd %s && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
    .. "-keyout key.pem -out req.pem -subj /CN=localhost && openssl ca -batch -config ca.cnf -selfsign "
    .. "-keyfile key.pem -in req.pem -out cert.pem -notext -startdate 20200101000000Z "
    .. "-enddate 20200201000000Z", q(d)))
  return d
end

describe("hints from evidence", function()
  local m, plain
  setup(function()
    m = assert(mock.start{ tls = true, pacing = false })
    plain = assert(mock.start{ tls = false, pacing = false, state = "unauthenticated", init_delay = 0 })
  end)
  teardown(function()
    m:stop()
    plain:stop()
  end)
  before_each(function()
    m:reset()
    plain:reset()
  end)

  it("a 429 with Retry-After (an endpoint's own pacing: /sso/validate 1 per 60 s) says how long to wait",
    function()
    local paced = assert(mock.start{ tls = true, pacing = true })
    finally(function() paced:stop() end)
    local args = { "--url", paced.url, "--retries", "0", "request", "GET", "/sso/validate" }
    assert.equal(0, (cli.run(args)))
    local rc, _, err = cli.run(args)                    -- a second process: no client pacing known
    assert.equal(1, rc)
    assert.matches("429", err)
    local wait = tonumber(err:match("hint: the gateway asks to wait (%d+) s %(Retry%-After, HTTP 429%) "
      .. "before you call /sso/validate again"))
    assert.is_true(wait ~= nil and wait >= 1 and wait <= 60, err)
    -- the Lua API's err.hint is the same
    local s <close> = ibkr.new{ base_url = paced.url, retries = 0 }
    local res, e = s:request("GET", "/sso/validate")
    assert.is_nil(res)
    assert.equal(429, e.status)
    assert.matches("^the gateway asks to wait %d+ s %(Retry%-After, HTTP 429%)", e.hint)
  end)

  it("a 400 answered over http:// is no sign of HTTPS: 'Init session first', 'no bridge'", function()
    local rc, _, err = cli.run{ "--url", plain.url, "request", "GET", "/iserver/accounts" }
    assert.equal(1, rc)
    assert.matches("Init session first", err)
    assert.not_matches("HTTPS", err)
    assert.matches("hint: the gateway says the brokerage session is not open %(\"Init session first\"%): "
      .. "`ibkr%-session init`", err)
    plain:fault{ path = "/iserver/accounts", kind = "status", status = 400,
      body = { error = "Bad Request: no bridge" } }
    rc, _, err = cli.run{ "--url", plain.url, "request", "GET", "/iserver/accounts" }
    assert.equal(1, rc)
    assert.not_matches("HTTPS", err)
    assert.matches("hint: the gateway says the brokerage session is not open "
      .. "%(\"Bad Request: no bridge\"%)", err)
    -- the Lua API knows the same
    local s <close> = ibkr.new{ base_url = plain.url }
    local res, e = s:request("GET", "/iserver/accounts")
    assert.is_nil(res)
    assert.matches("brokerage session is not open .*s:init_brokerage%(%)", e.hint)
    assert.not_matches("HTTPS", e.hint)
  end)

  it("over http://, only an answer that says so (or no HTTP at all) suggests HTTPS", function()
    plain:fault{ path = "/tickle", kind = "html", status = 400,
      title = "400 The plain HTTP request was sent to HTTPS port" }
    local s <close> = ibkr.new{ base_url = plain.url, retries = 0 }
    local _, e = s:tickle()
    assert.matches("may speak HTTPS .*base_url = https://127%.0%.0%.1:%d+/v1/api", e.hint)
    -- an HTTPS gateway asked in plain HTTP closes the connection: no HTTP came back
    local s2 <close> = ibkr.new{ base_url = (m.url:gsub("^https:", "http:")), retries = 0 }
    local _, e2 = s2:tickle()
    assert.equal("protocol", e2.kind)
    assert.matches("may speak HTTPS", e2.hint)
    -- https:// at a plain HTTP server
    local s3 <close> = ibkr.new{ base_url = (plain.url:gsub("^http:", "https:")) }
    local _, e3 = s3:tickle()
    assert.equal("tls", e3.kind)
    assert.matches("does not speak TLS here", e3.hint)
    -- a base URL without /v1/api
    local s4 <close> = ibkr.new{ base_url = plain.root }
    local _, e4 = s4:tickle()
    assert.equal(404, e4.status)
    assert.matches("has no /v1/api: .*base_url = http://127%.0%.0%.1:%d+/v1/api", e4.hint)
  end)

  it("the gateway's own certificate, expired, given as the CA file: says it expired, and when", function()
    local d = expired_certificate()
    finally(function() os.execute("rm -rf " .. q(d)) end)
    local gw = assert(mock.start{ tls = true, pacing = false,
      args = { "--cert", d .. "/cert.pem", "--key", d .. "/key.pem" } })
    finally(function() gw:stop() end)
    local cert = d .. "/cert.pem"
    local rc, out, err = cli.run{ "--url", gw.url, "--cacert", cert, "status" }
    assert.equal(2, rc)
    assert.matches("^tls ", out)
    assert.matches("hint: TLS: the certificate in " .. cert:gsub("%p", "%%%0")
      .. " expired on 2020%-02%-01T00:00:00Z", err)
    assert.not_matches("not signed by", err)
    local s <close> = ibkr.new{ base_url = gw.url, ca_file = cert }
    local _, e = s:tickle()
    assert.equal("tls", e.kind)
    assert.equal(10, e.verify_result)
    assert.equal("2020-02-01T00:00:00Z", e.not_after)
    assert.matches("expired on 2020%-02%-01T00:00:00Z: .*ca_file = FILE.*verify = false", e.hint)
    -- a CA file that did not sign it still says so
    rc, _, err = cli.run{ "--url", m.url, "--cacert", cert, "status" }
    assert.equal(2, rc)
    assert.matches("hint: TLS: the gateway's certificate is not signed by", err)
  end)

  it("a 401 from ssodh/init while auth/status says connected is no 'login required'", function()
    plain:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 401, count = 3,
      body = { error = "Unauthorized" } }
    local rc, _, err = cli.run{ "--url", plain.url, "init" }
    assert.equal(1, rc) -- was 3, "login required: open a browser"
    assert.not_matches("login required", err)
    assert.matches("hint: ssodh/init was refused %(HTTP 401%)", err)
    local s <close> = ibkr.new{ base_url = plain.url }
    assert.equal("unauthenticated", (s:health()))
    local res, e = s:init_brokerage()
    assert.is_nil(res)
    assert.equal(401, e.status)
    assert.equal("unauthenticated", (s:state())) -- not "no_session"
    -- a 401 elsewhere still means the session is gone
    plain:set_state("no_session")
    rc, _, err = cli.run{ "--url", plain.url, "tickle" }
    assert.equal(3, rc)
    assert.matches("login required", err)
  end)

  it("wait --init against a gateway that answers at once never blames the gateway's speed", function()
    plain:config{ init_delay = 1000, reauth_delay = 1000 } -- answers, but never becomes ready
    local rc, out, err = cli.run{ "--url", plain.url, "wait", "--init", "--timeout", "5" }
    assert.equal(1, rc)
    assert.equal("", out)
    assert.not_matches("did not answer in time", err)
    assert.not_matches("down", err)
    assert.not_matches("no time left", err)
    assert.matches("state: unauthenticated", err)
    assert.matches("hint: the gateway answers, but the session stayed unauthenticated after "
      .. "reauthenticate", err)
    local _, js = cli.run{ "--url", plain.url, "--json", "wait", "--init", "--timeout", "4" }
    local doc = cli.json_lines(js)[1]
    assert.equal("unauthenticated", doc.state)
    assert.equal(1, doc.exit)
  end)
end)
