-- OAuth: IBKR's own reason for refusing the live session token reaches the human line (not only
-- --json), an answer that is not JSON says what it was, and a token refused again and again is
-- asked for with a growing backoff (30 s from the second refusal, doubling, at most 600 s), never
-- every few seconds. Against the mock gateway in OAuth mode (which checks the consumer) and a raw
-- socket server; long times pass on a fake clock.
local ibkr = require("ibkr")
local oauth = require("ibkr.oauth")
local mock = require("spec.helpers.mock")
local cli = require("spec.helpers.cli")
local raw = require("spec.helpers.raw")
local fake_time = require("spec.helpers.clock").new
local ka = require("spec.helpers.keepalive")
local q = raw.q

local function read(path)
  local f = assert(io.open(path, "rb"))
  local d = f:read("a")
  f:close()
  return d
end

local function write_private(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  assert(os.execute("chmod 600 " .. q(path)))
end

describe("a refused live session token", function()
  local m, dir, cfg
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. q(dir)))
    m = assert(mock.start{ pacing = false, tls = false, args = { "--oauth", "--oauth-dir", dir } })
    cfg = assert(oauth.read_config(dir .. "/oauth.conf"))
    cfg.consumer_key = "NOTAKEY01" -- a consumer IBKR does not know
    write_private(dir .. "/wrong.conf",
      (read(dir .. "/oauth.conf"):gsub("consumer_key%s*=[^\n]*", "consumer_key = NOTAKEY01")))
  end)
  teardown(function()
    m:stop()
    os.execute("rm -rf " .. q(dir))
  end)
  local function rejected() return m:control("GET", "/__mock/oauth").counters.rejected end

  it("says IBKR's reason on the human line: 401 invalid consumer", function()
    local before = rejected()
    local rc, out, err = cli.run{ "--url", m.url, "--oauth-config", dir .. "/wrong.conf", "tickle" }
    assert.equal(1, rc)
    assert.equal("", out)
    assert.matches("live session token request refused: HTTP 401: [^\n]*invalid consumer", err)
    assert.matches("hint: IBKR does not know this consumer key", err)
    rc, out = cli.run{ "--url", m.url, "--oauth-config", dir .. "/wrong.conf", "status" }
    assert.equal(1, rc)
    assert.matches("^error %(.*invalid consumer", out)
    assert.equal(2, rejected() - before)
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg }
    local res, e = s:tickle()
    assert.is_nil(res)
    assert.equal("auth", e.kind)
    assert.equal(401, e.status)
    assert.matches("invalid consumer", e.message)
    assert.matches("consumer key", e.hint)
  end)

  it("backs off a token refused again and again: the keep-alive asks ~11 times an hour, not 720", function()
    local ft = fake_time()
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, clock = ft.clock, sleep = ft.sleep }
    local before = rejected()
    local rec = ka.start(s, { interval = 60, retry_interval = 5 })
    local stop = ft.t + 3600
    while ft.t < stop do assert(ka.turn(rec.co, ft, 1)) end
    local asked = rejected() - before
    -- refusals at 0 and 5 s, then held 30, 60, 120, 240, 480, 600, 600... (+ up to 10 %)
    assert.is_true(asked >= 9 and asked <= 12, asked .. " token requests in an hour")
    assert.equal("auth", rec.errors[#rec.errors].kind)
  end)

  it("holds the calls that need a token after the second refusal, saying why and for how long", function()
    local ft = fake_time()
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, clock = ft.clock, sleep = ft.sleep }
    local before = rejected()
    assert.is_nil((s:tickle()))
    local _, e2 = s:auth_status()
    assert.equal(2, rejected() - before)
    local _, e3 = s:reauthenticate() -- (no pacing wait for this path: the fake clock stands still)
    assert.equal(2, rejected() - before) -- held: no request
    assert.equal("auth", e3.kind)
    assert.is_true(e3.retry_after >= 30 and e3.retry_after <= 33, tostring(e3.retry_after))
    assert.equal(e2, e3.cause)
    assert.matches("held back .* after 2 refusals in a row .*invalid consumer", e3.message)
    assert.matches("IBKR refused the live session token 2 times in a row", e3.hint)
    assert.equal(e3.retry_after, s:held())
    ft.t = ft.t + e3.retry_after
    assert.is_nil((s:tickle()))
    assert.equal(3, rejected() - before) -- asked again once the hold ended
  end)
end)

describe("a token request answered 200 with a body that is not JSON", function()
  it("says what it was (an HTML page and its title), not 'refused: HTTP 200'", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. q(dir)))
    finally(function() os.execute("rm -rf " .. q(dir)) end)
    -- the mock only makes the consumer's keys here
    local m = assert(mock.start{ pacing = false, tls = false, args = { "--oauth", "--oauth-dir", dir } })
    m:stop()
    local cfg = assert(oauth.read_config(dir .. "/oauth.conf"))
    local page = "<!DOCTYPE html><html><head><title>Scheduled maintenance</title></head><body>back soon"
      .. "</body></html>"
    local p, port = raw.server("socket = require('socket')\n" .. raw.READ_REQUEST .. [[
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname(); print(port); io.stdout:flush()
srv:settimeout(10)
local c = srv:accept() -- the one token request (retries = 0), then done
if c and read_request(c) then
  local body = ]] .. string.format("%q", page) .. [[
  c:send("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\nContent-Length: "
    .. #body .. "\r\n\r\n" .. body)
end
if c then c:close() end
]])
    finally(function() p:close() end)
    local url = "http://127.0.0.1:" .. port .. "/v1/api"
    local s <close> = ibkr.new{ base_url = url, oauth = cfg, retries = 0 }
    local res, e = s:tickle()
    assert.is_nil(res)
    assert.equal("auth", e.kind)
    assert.equal(200, e.status)
    assert.not_matches("refused: HTTP 200", e.message)
    assert.matches("answered HTTP 200 with an HTML page titled \"Scheduled maintenance\", not JSON",
      e.message)
    assert.matches("web page", e.hint)
  end)
end)
