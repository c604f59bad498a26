-- OAuth 2.0 (private_key_jwt): config checks, the worked example of docs/oauth.md (values computed
-- with Python and the openssl command line, apart from ours), and the whole flow against the mock
-- gateway in OAuth 2.0 mode, which checks every JWT and bearer: renewal under load, every refusal
-- and hostile token answer, backoff, the CLI, and secrets kept out of every message.
local ibkr = require("ibkr")
local oauth2 = require("ibkr.oauth2")
local mock = require("spec.helpers.mock")
local fake_clock = require("spec.helpers.clock")
local raw = require("spec.helpers.raw")
local prim = ibkr.core.oauth
local q = raw.q

local SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1

local function sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD sh -c " .. q(cmd) .. " 2>&1", "r"))
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end

local function write(path, data, mode)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  assert(sh("chmod " .. (mode or "600") .. " " .. q(path)))
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local d = f:read("a")
  f:close()
  return d
end

local tmp = os.tmpname()
os.remove(tmp)
assert(sh("mkdir -m 700 " .. q(tmp)))
teardown(function() os.execute("rm -rf " .. q(tmp)) end)

-- a 2048-bit key pair made with the openssl command line
local function openssl_key(name)
  local key = tmp .. "/" .. name .. ".pem"
  local out, ok = sh(string.format("umask 077 && openssl genpkey -algorithm RSA "
    .. "-pkeyopt rsa_keygen_bits:2048 -out %s 2>&1 && openssl pkey -in %s -pubout -out %s.pub",
    q(key), q(key), q(key)))
  assert(ok, out)
  return key
end

-- No secret of `secrets` (strings) in `text`.
local function assert_clean(text, secrets)
  for _, secret in ipairs(secrets) do
    if secret and #secret >= 8 then
      assert.is_nil(text:find(secret, 1, true), "a secret leaked into: " .. text:sub(1, 300))
    end
  end
end

-- ibkr-session in process: exit code, stdout, stderr
local function run(args)
  local out, errs = {}, {}
  local io_ = {
    stdout = { write = function(_, ...) for _, v in ipairs({ ... }) do out[#out + 1] = v end end },
    stderr = { write = function(_, ...) for _, v in ipairs({ ... }) do errs[#errs + 1] = v end end },
  }
  local code = require("ibkr.cli").main(args, io_)
  return code, table.concat(out), table.concat(errs)
end

-- Runs the functions as cooperative coroutines until all have ended (bounded); returns their results.
local function run_all(fns, limit)
  local cos, results = {}, {}
  for i, f in ipairs(fns) do
    cos[i] = coroutine.create(function() results[i] = table.pack(f()) end)
  end
  local deadline = ibkr.core.monotonic() + (limit or 30) * SCALE
  while true do
    local alive, wait = 0, 0.05
    for _, co in ipairs(cos) do
      if coroutine.status(co) ~= "dead" then
        local ok, secs = coroutine.resume(co)
        assert(ok, secs)
        if coroutine.status(co) ~= "dead" then
          alive = alive + 1
          wait = math.min(wait, tonumber(secs) or 0.001)
        end
      end
    end
    if alive == 0 then return results end
    assert(ibkr.core.monotonic() < deadline, "coroutines still running")
    ibkr.core.sleep(wait)
  end
end

------------------------------------------------------------------------------------------------

describe("oauth2 config", function()
  local key, base
  setup(function()
    key = openssl_key("cfg")
    base = { client_id = "C1", key_id = "main", credential = "user1", ip = "203.0.113.7",
      private_key_file = key }
  end)
  local function with(changes)
    local c = {}
    for k, v in pairs(base) do c[k] = v end
    for k, v in pairs(changes) do
      if v == "nil" then c[k] = nil else c[k] = v end
    end
    return c
  end
  local function raises(cfg, field, opts)
    local o = { base_url = "https://api.ibkr.com/v1/api", oauth2 = cfg }
    for k, v in pairs(opts or {}) do o[k] = v end
    local ok, err = pcall(function() local s = ibkr.new(o) return s end) -- not a tail call: the line
    assert.is_false(ok)
    assert.matches("'" .. field .. "'", err, 1, true)
    assert.matches("oauth2_spec.lua:%d+:", err) -- at the caller's line
    assert_clean(err, { read(key):match("\n(%S+)\n") })
    return err
  end

  it("raises at ibkr.new naming each missing field", function()
    for _, k in ipairs({ "client_id", "key_id", "credential", "ip" }) do
      raises(with({ [k] = "nil" }), k)
    end
    raises(with({ private_key_file = "nil" }), "private_key")
  end)

  it("raises naming malformed fields", function()
    raises(with({ ip = "999.1.1.1" }), "ip")
    raises(with({ ip = "not an address" }), "ip")
    raises(with({ client_id = 42 }), "client_id")
    raises(with({ key_id = "" }), "key_id")
    raises(with({ credential = "a\nb" }), "credential")
    raises(with({ token_url = "ftp://api.ibkr.com/token" }), "token_url")
    raises(with({ token_url = "https://user:pw@api.ibkr.com/token" }), "token_url")
    raises(with({ sso_url = "https://api.ibkr.com/sso?x=1" }), "sso_url")
    raises(with({ private_key_file = "nil", private_key = "not pem" }), "private_key")
    raises(with({ private_key_file = "nil",
      private_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" }), "private_key")
    raises(with({ private_key = read(key) }), "private_key") -- both forms
    raises(with({ private_key_file = tmp .. "/nonexistent.pem" }), "private_key_file")
    raises(with({ bogus = "x" }), "bogus")
    -- RS256 needs at least 2048 bits
    local small = tmp .. "/small.pem"
    assert(sh("umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " .. q(small)))
    local err = raises(with({ private_key_file = small }), "private_key_file")
    assert.matches("1024 bits", err)
  end)

  it("refuses a key file readable by others, naming it", function()
    local f = tmp .. "/open.pem"
    write(f, read(key), "644")
    local err = raises(with({ private_key_file = f }), "private_key_file")
    assert.matches("group or others", err)
  end)

  it("takes the key as PEM text, and refuses oauth with oauth2", function()
    ibkr.new{ base_url = "https://api.ibkr.com/v1/api", oauth2 = with({ private_key_file = "nil",
      private_key = read(key) }) }:close()
    local ok, err = pcall(function()
      local s = ibkr.new{ base_url = "https://api.ibkr.com/v1/api", oauth2 = base, oauth = {} }
      return s
    end)
    assert.is_false(ok)
    assert.matches("'oauth' and 'oauth2'", err)
    assert.matches("oauth2_spec.lua:%d+:", err)
  end)

  it("keeps https and TLS verification for non-loopback hosts", function()
    raises(base, "base_url", { base_url = "http://api.ibkr.com/v1/api" })
    raises(with({ token_url = "http://api.ibkr.com/oauth2/api/v1/token" }), "token_url")
    raises(with({ sso_url = "http://api.ibkr.com/gw/api/v1/sso-sessions" }), "sso_url")
    local err = raises(base, "base_url", { verify = false })
    assert.matches("TLS verification", err)
    -- loopback (the mock) keeps the usual automatic rule
    ibkr.new{ base_url = "http://127.0.0.1:1/v1/api", oauth2 = with({
      token_url = "http://127.0.0.1:1/t", sso_url = "http://[::1]:1/s" }) }:close()
  end)
end)

------------------------------------------------------------------------------------------------

-- the worked example: the `name = value` lines and the PEM key of docs/oauth.md's OAuth 2.0 example
local function worked_example()
  local doc = read("docs/oauth.md")
  local section = assert(doc:match("### OAuth 2.0 worked example(.*)$"))
  local pem = assert(section:match(
    "```\n(%-%-%-%-%-BEGIN PRIVATE KEY%-%-%-%-%-\n.-\n%-%-%-%-%-END PRIVATE KEY%-%-%-%-%-\n)```"))
  local t = { pem = pem }
  local block = assert(section:match("```\n(client_id = .-)```"))
  for k, v in block:gmatch("([%w_]+) = ([^\n]+)") do t[k] = v end
  return t
end

describe("oauth2 worked example (docs/oauth.md)", function()
  local EX, signer
  setup(function()
    EX = worked_example()
    signer = oauth2.new({ client_id = EX.client_id, key_id = EX.key_id, credential = EX.credential,
      ip = EX.ip, private_key = EX.pem }, { base_url = "https://api.ibkr.com/v1/api" })
    signer.time = function() return tonumber(EX.now) + 0.75 end -- seconds are whole in the claims
  end)
  teardown(function() signer:close() end)

  it("builds the header, the claims, the signing input and the client assertion", function()
    local jtis = { EX.jti }
    signer.jti = function() return table.remove(jtis, 1) end
    assert.equal(EX.header, signer:header_json())
    assert.equal(EX.claims, signer:assertion_claims(tonumber(EX.now)))
    jtis = { EX.jti }
    local a = signer:client_assertion()
    assert.equal(EX.client_assertion, a)
    assert.equal(EX.signing_input, a:match("^(.*)%.[^.]*$"))
    assert.equal(EX.token_body, oauth2.token_form(a))
  end)

  it("builds the SSO session JWT", function()
    signer.jti = function() return EX.session_jti end
    assert.equal(EX.session_claims, signer:session_claims(tonumber(EX.now)))
    local j = signer:session_jwt()
    assert.equal(EX.session_jwt, j)
    assert.equal(EX.session_signing_input, j:match("^(.*)%.[^.]*$"))
  end)

  it("agrees with openssl on both signatures", function()
    local key = tmp .. "/example.pem"
    write(key, EX.pem)
    assert(sh("openssl pkey -in " .. q(key) .. " -pubout -out " .. q(key .. ".pub")))
    for _, jwt in ipairs({ EX.client_assertion, EX.session_jwt }) do
      local input, sig = jwt:match("^(.*)%.([^.]*)$")
      write(tmp .. "/input.txt", input)
      write(tmp .. "/sig.bin", prim.b64url_decode(sig))
      local out, ok = sh(string.format("openssl dgst -sha256 -verify %s -signature %s %s", q(key .. ".pub"),
        q(tmp .. "/sig.bin"), q(tmp .. "/input.txt")))
      assert.is_true(ok, out)
      assert.matches("Verified OK", out)
    end
  end)

  it("encodes base64url as RFC 7515 says, strictly", function()
    assert.equal("AAECAwQFBgcICQoLDA0ODw", prim.b64url_encode(string.char(table.unpack({
      0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 }))))
    assert.equal("-_-_", prim.b64url_encode("\251\255\191"))
    assert.equal("\251\255\191", prim.b64url_decode("-_-_"))
    assert.equal("a", prim.b64url_decode("YQ"))
    for _, bad in ipairs({ "", "Y", "YQ==", "Y+Q", "Y/Q", "YQ Q" }) do
      assert.is_nil(prim.b64url_decode(bad), bad)
    end
    assert.equal(22, #oauth2.jti())
    assert.are_not.equal(oauth2.jti(), oauth2.jti())
  end)
end)

------------------------------------------------------------------------------------------------

-- A mock in OAuth 2.0 mode shared by a describe block; reset between tests.
local function oauth2_mock(tls, extra)
  local o = { tls = tls, pacing = false, init_delay = 0, oauth2 = { key_bits = 2048 } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return assert(mock.start(o))
end

local function counters(m) return m:oauth2().counters end

for _, tls in ipairs({ false, true }) do
  describe("oauth2 against the mock gateway (" .. (tls and "HTTPS" or "HTTP") .. ")", function()
    local m
    setup(function() m = oauth2_mock(tls) end)
    teardown(function() if m then m:stop() end end)
    before_each(function()
      m:reset()
      m:oauth2({ reset = true })
    end)

    it("opens an SSO session, then the brokerage session; Bearer on every call", function()
      local s <close> = m:oauth2_session{ pacing = false }
      assert.equal("unauthenticated", (s:health()))
      assert.truthy(s:init_brokerage())
      assert.truthy(s:wait_ready{ timeout = 10 * SCALE, init = false })
      assert.truthy(s:tickle())
      assert.truthy(s:sso_validate())
      assert.truthy(s:request("GET", "/iserver/accounts"))
      local c = counters(m)
      assert.equal(1, c.tokens_issued)
      assert.equal(1, c.sessions_issued)
      assert.equal(0, c.rejected)
      assert.is_true(c.verified >= 5)
      -- what went on the wire: a form with the assertion, a JWT body, then the bearer
      local log = m:log()
      assert.equal("/oauth2/api/v1/token", log[1].path)
      assert.matches("^application/x%-www%-form%-urlencoded", log[1].headers["content-type"])
      assert.equal("/gw/api/v1/sso-sessions", log[2].path)
      assert.equal("application/jwt", log[2].headers["content-type"])
      assert.matches("^Bearer ", log[2].headers.authorization)
      assert.equal("/v1/api/iserver/auth/status", log[3].path)
      assert.equal(s._oauth.session.header, log[3].headers.authorization)
      assert.same({ status = true }, (s:logout()))
    end)

    it("renews an SSO session the server dropped (401), sends ssodh/init again, and is ready", function()
      local s <close> = m:oauth2_session{ pacing = false }
      assert.truthy(s:init_brokerage{ compete = true })
      assert.truthy(s:wait_ready{ timeout = 10 * SCALE, init = false })
      m:clear_log()
      m:oauth2({ expire = "sessions" })
      assert.truthy(s:tickle())
      local c = counters(m)
      assert.equal(2, c.sessions_issued)
      assert.equal(1, c.tokens_issued) -- the access token was still good
      local paths = {}
      for _, e in ipairs(m:log()) do paths[#paths + 1] = e.method .. " " .. e.path end
      assert.same({ "POST /v1/api/tickle", "POST /gw/api/v1/sso-sessions",
        "POST /v1/api/iserver/auth/ssodh/init", "POST /v1/api/tickle" }, paths)
      assert.equal(401, m:log()[1].status)
      assert.equal('{"publish":true,"compete":true}', m:log()[3].body)
      -- ready again without anyone else calling ssodh/init
      assert.truthy(s:wait_ready{ timeout = 10 * SCALE, init = false })
    end)

    it("serves ibkr-session --oauth2-config FILE wait --init: a new SSO session, then ready", function()
      local conf = m:oauth2().client.config_file
      local code, out, err = run({ "--oauth2-config", conf, "wait", "--init",
        "--timeout", tostring(20 * SCALE) })
      assert.equal(0, code, out .. err)
      code, out = run({ "--json", "--oauth2-config", conf, "status" }) -- its own SSO session: not ready
      assert.equal(1, code)
      assert.matches('"state":"unauthenticated"', out, 1, true)
    end)

    it("renews before expiry on the session's clock: access token and SSO session, once", function()
      local clk = fake_clock.new()
      m:oauth2({ token_ttl = 600, session_ttl = 1200 })
      local s <close> = m:oauth2_session{ pacing = false, clock = clk.clock, sleep = clk.sleep }
      assert.truthy(s:tickle())
      clk.t = clk.t + 500 -- both still good (renewed 60 s before expiry)
      assert.truthy(s:tickle())
      assert.equal(1, counters(m).sessions_issued)
      clk.t = clk.t + 700 -- 1200 s: the SSO session is due; the access token (600 s) too
      assert.truthy(s:tickle())
      local c = counters(m)
      assert.equal(2, c.sessions_issued)
      assert.equal(2, c.tokens_issued)
      assert.equal(0, c.rejected)
    end)

    it("uses a token without expires_in once and an SSO session without it for a day", function()
      local clk = fake_clock.new()
      m:oauth2({ sso_expires_in = false })
      local s <close> = m:oauth2_session{ pacing = false, clock = clk.clock, sleep = clk.sleep }
      assert.truthy(s:tickle())
      clk.t = clk.t + 86400 - 61
      assert.truthy(s:tickle())
      assert.equal(1, counters(m).sessions_issued)
      clk.t = clk.t + 2
      assert.truthy(s:tickle())
      assert.equal(2, counters(m).sessions_issued)
    end)

    it("keeps the session alive through a dropped SSO session (keep-alive without init)", function()
      local s <close> = m:oauth2_session{ pacing = false }
      assert.truthy(s:init_brokerage())
      local states = {}
      local ka = s:keepalive{ interval = 0.2, retry_interval = 0.2, init = false,
        on_state = function(new) states[#states + 1] = new end }
      local function drive_until(pred)
        local deadline = ibkr.core.monotonic() + 20 * SCALE
        while not pred() do
          assert(ibkr.core.monotonic() < deadline, "keep-alive stuck: " .. table.concat(states, ","))
          local ok, wait = coroutine.resume(ka)
          assert(ok, wait)
          ibkr.core.sleep(math.min(tonumber(wait) or 0.01, 0.05))
        end
      end
      drive_until(function() return states[#states] == "ready" end)
      m:oauth2({ expire = "sessions" })
      local before = #states
      drive_until(function() return counters(m).sessions_issued == 2 and states[#states] == "ready"
        and (#states > before or s:state() == "ready") end)
      s:stop()
      coroutine.resume(ka)
    end)
  end)
end

------------------------------------------------------------------------------------------------

describe("oauth2 renewal under load", function()
  local m
  setup(function() m = oauth2_mock(false) end)
  teardown(function() if m then m:stop() end end)
  before_each(function()
    m:reset()
    m:oauth2({ reset = true })
  end)

  local N = 25
  local function burst(s)
    local fns = {}
    for i = 1, N do
      fns[i] = i % 2 == 0 and function() return s:tickle() end
        or function() return s:auth_status() end
    end
    return run_all(fns)
  end

  it("renews once for a burst of 401s from many cooperative callers", function()
    local s <close> = m:oauth2_session{ pacing = false, cooperative = true }
    local first = run_all({ function() return s:tickle() end })
    assert.truthy(first[1][1])
    m:oauth2({ expire = "all" }) -- every session and access token forgotten: N callers get 401
    local results = burst(s)
    for i = 1, N do assert.truthy(results[i][1], tostring(results[i][2])) end
    local c = counters(m)
    assert.equal(2, c.sessions_issued)
    assert.equal(2, c.tokens_issued)
  end)

  it("renews once when the token expires on the clock with many callers waiting", function()
    local clk = fake_clock.new()
    local s <close> = m:oauth2_session{ pacing = false, cooperative = true, clock = clk.clock,
      sleep = clk.sleep }
    assert.truthy(run_all({ function() return s:tickle() end })[1][1])
    clk.t = clk.t + 90000
    local results = burst(s)
    for i = 1, N do assert.truthy(results[i][1], tostring(results[i][2])) end
    local c = counters(m)
    assert.equal(2, c.token_requests)
    assert.equal(2, c.sso_requests)
    assert.equal(0, c.rejected)
  end)

  it("asks once when the renewal is refused, however many callers wait", function()
    local s <close> = m:oauth2_session{ pacing = false, cooperative = true }
    m:oauth2_fault{ kind = "refused", error = "invalid_client", description = "no such client", count = 100 }
    local results = burst(s)
    for i = 1, N do
      assert.is_nil(results[i][1])
      assert.equal("auth", results[i][2].kind)
    end
    -- the callers that waited for the renewal share its refusal; one refusal is no streak
    -- (ibkr/kinds.lua: token refusals hold from the second in a row), so a caller that comes
    -- after it (when the answer arrived before the others were resumed) asks once more, and
    -- the second refusal holds every other caller back
    local asked = counters(m).token_requests
    assert.is_true(asked == 1 or asked == 2, tostring(asked))
  end)
end)

------------------------------------------------------------------------------------------------

describe("oauth2 refusals and hostile answers", function()
  local m
  setup(function() m = oauth2_mock(false) end)
  teardown(function() if m then m:stop() end end)
  before_each(function()
    m:reset()
    m:oauth2({ reset = true })
  end)

  local function session(extra, cfg_changes)
    local cfg = assert(oauth2.read_config(m:oauth2().client.config_file))
    for k, v in pairs(cfg_changes or {}) do cfg[k] = v end
    local o = { base_url = m.url, oauth2 = cfg, pacing = false, retries = 0 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return ibkr.new(o)
  end

  -- the first call's error, after checking it is kind "auth" and names the endpoint
  local function refused(s, where)
    local res, err = s:tickle()
    assert.is_nil(res)
    assert.equal("auth", err.kind, tostring(err))
    assert.equal(where == "sso" and "/gw/api/v1/sso-sessions" or "/oauth2/api/v1/token", err.path)
    assert.is_nil(err.body)
    return err, tostring(err)
  end

  it("says IBKR's reason for a refused client, with the midnight-reset hint", function()
    m:oauth2_fault{ kind = "refused", error = "invalid_client", description = "client authentication failed",
      count = 2 }
    local s <close> = session()
    local err, line = refused(s)
    assert.equal(401, err.status)
    assert.matches("invalid_client: client authentication failed", line, 1, true)
    assert.equal("invalid_client", err.data.error)
    assert.matches("midnight", err.hint)
    assert.equal("error", (s:health()))
  end)

  it("refuses a key IBKR does not know, a wrong kid, a wrong credential and a wrong ip", function()
    local other = openssl_key("other")
    local cases = {
      { { private_key_file = other }, "token", "signature does not verify" },
      { { key_id = "nokey" }, "token", "unknown kid" },
      { { client_id = "SOMEONEELSE" }, "token", "iss is not the client_id" },
      { { credential = "nobody" }, "sso", "credential is not the user" },
      { { ip = "203.0.113.7" }, "sso", "ip 203.0.113.7 does not match" },
    }
    for _, c in ipairs(cases) do
      local s <close> = session(nil, c[1])
      local err, line = refused(s, c[2])
      assert.matches(c[3], line, 1, true)
      assert.equal(401, err.status)
      assert.truthy(err.hint, line)
    end
    local s <close> = session(nil, { ip = "203.0.113.7" })
    assert.matches("'ip'", select(2, s:tickle()).hint)
  end)

  -- OAuth 2.0 refusals get OAuth 2.0 hints (ibkr/kinds.lua), never OAuth 1.0a's (live session
  -- token, consumer key, access_token_secret), whatever IBKR's words: also a refusal no rule knows
  -- and the hold after refusals in a row
  it("hints at OAuth 2.0 causes, never at OAuth 1.0a's", function()
    local oauth1 = { "live session token", "consumer", "access_token_secret", "dh_prime" }
    local function clean(hint)
      assert.truthy(hint)
      for _, w in ipairs(oauth1) do assert.is_nil(hint:find(w, 1, true), hint) end
    end
    for _, endpoint in ipairs({ "token", "sso" }) do
      for _, code in ipairs({ "invalid_request", "invalid_client", "invalid_grant", "access_denied" }) do
        m:oauth2({ reset = true })
        m:oauth2_fault{ endpoint = endpoint, kind = "refused", error = code, description = "no", count = 1 }
        local s <close> = session()
        local err = refused(s, endpoint)
        clean(err.hint)
        assert.matches(code == "invalid_client" and "midnight reset" or "OAuth 2.0", err.hint)
      end
    end
    local clk = fake_clock.new()
    m:oauth2({ reset = true })
    m:oauth2_fault{ kind = "refused", error = "invalid_request", description = "no", count = 2 }
    local s <close> = session({ clock = clk.clock, sleep = clk.sleep })
    refused(s)
    refused(s)
    local held = refused(s)
    assert.truthy(held.hold)
    clean(held.hint)
    assert.matches("OAuth 2.0 access token request 2 times in a row", held.hint, 1, true)
  end)

  it("refuses hostile token answers with clear kind auth errors", function()
    local cases = {
      { { kind = "malformed" }, "not JSON" },
      { { kind = "html", status = 502, title = "Bad Gateway" }, "refused: HTTP 502: Bad Gateway" },
      { { kind = "status", status = 200, body = "[1,2]" }, "no access_token" },
      { { kind = "status", status = 200, body = '"text"' }, "not a JSON object" },
      { { kind = "missing" }, "no access_token" },
      { { kind = "missing", field = "token_type" }, nil },
      { { kind = "expired" }, "expired on arrival (expires_in = 0)" },
      { { kind = "expired", expires_in = -5 }, "expired on arrival (expires_in = -5)" },
      { { kind = "status", status = 200, body = '{"access_token":"a b"}' }, "not a bearer token" },
      { { kind = "status", status = 200, body = '{"access_token":"' .. string.rep("x", 9000) .. '"}' },
        "not a bearer token" },
      { { kind = "status", status = 200, body = '{"access_token":"abc","token_type":"MAC"}' }, "not Bearer" },
      { { kind = "status", status = 200, body = '{"access_token":"a","expires_in":"60"}' }, "not a number" },
      { { kind = "huge", bytes = 1000000 }, "larger than 65536 bytes" },
      { { kind = "status", status = 400, body = '{"error":"invalid_request"}' }, "400: invalid_request" },
      { { kind = "empty" }, "no access_token" }, -- an empty 2xx body is {}
    }
    for _, case in ipairs(cases) do
      for _, endpoint in ipairs({ "token", "sso" }) do
        m:oauth2({ reset = true })
        local f = { endpoint = endpoint }
        for k, v in pairs(case[1]) do f[k] = v end
        m:oauth2_fault(f)
        local s <close> = session()
        if case[2] then
          local _, line = refused(s, endpoint)
          assert.matches(case[2], line, 1, true)
        else -- a missing token_type is no reason to refuse (the mock then refuses the made-up token)
          local res, err = s:tickle()
          assert.is_true(res ~= nil or not tostring(err):find("token_type", 1, true), tostring(err))
        end
      end
    end
  end)

  it("turns a slow answer into kind auth within the call's time", function()
    m:oauth2_fault{ kind = "delay", seconds = 60 }
    local s <close> = session({ timeout = 0.5, deadline = 1 })
    local t0 = ibkr.core.monotonic()
    local _, line = refused(s)
    assert.matches("no answer in time", line)
    assert.is_true(ibkr.core.monotonic() - t0 < 30 * SCALE)
  end)

  it("backs off repeated refusals: nothing is sent while held, the hold grows", function()
    local clk = fake_clock.new()
    m:oauth2_fault{ kind = "refused", count = 3 }
    local s <close> = session({ clock = clk.clock, sleep = clk.sleep })
    local err1 = refused(s)
    assert.is_nil(err1.hold) -- one refusal is no streak: the next call asks again
    refused(s)
    assert.equal(2, counters(m).token_requests)
    local held, line = refused(s) -- the second refusal in a row holds renewals back
    assert.equal(2, counters(m).token_requests)
    assert.is_true(held.hold >= 30 and held.hold <= 33, tostring(held.hold))
    assert.equal(held.hold, held.retry_after)
    assert.matches("held back", line)
    assert.equal("auth", held.cause.kind)
    clk.t = clk.t + 33.01
    refused(s) -- the third refusal: the hold doubles
    assert.equal(3, counters(m).token_requests)
    local held2 = refused(s)
    assert.is_true(held2.hold > 59 and held2.hold <= 66, tostring(held2.hold))
    clk.t = clk.t + 66.01
    assert.truthy(s:tickle()) -- the fault is used up: accepted, the backoff forgotten
    assert.equal(4, counters(m).token_requests)
  end)

  it("keeps the assertion, tokens and key out of what a hostile server echoes", function()
    m:oauth2({ echo = 1 })
    local s <close> = session()
    local err, line = refused(s)
    local sent = m:log()[#m:log()].body
    local assertion = sent:match("client_assertion=([^&]+)")
    assert.truthy(assertion)
    assert.matches("[redacted]", line, 1, true)
    local json_line = require("ibkr.cli.out").json(require("ibkr.cli.report").plain_error(err))
    assert_clean(line .. err.message .. json_line, { assertion, assertion:match("%.([^.]+)$") })
  end)

  -- the bearer and the body of the last request to `path` (the mock's log)
  local function sent_to(path)
    local log = m:log()
    for i = #log, 1, -1 do
      if log[i].path:find(path, 1, true) then
        return (log[i].headers.authorization or ""):match("^Bearer (%S+)$"), log[i].body
      end
    end
  end

  -- every string in v (keys too), tostring of tables with a __tostring (errors)
  local function strings(v, out, seen)
    out, seen = out or {}, seen or {}
    if type(v) == "string" then out[#out + 1] = v
    elseif type(v) == "table" and not seen[v] then
      seen[v] = true
      local mt = getmetatable(v)
      if mt and mt.__tostring then out[#out + 1] = tostring(v) end
      for k, x in pairs(v) do strings(k, out, seen); strings(x, out, seen) end
    end
    return out
  end

  -- the SSO endpoint refuses (401) quoting the access token: the signer drops that token, and it
  -- is redacted still
  it("keeps the access token and the session JWT out of an SSO refusal that echoes them", function()
    m:oauth2({ echo = 1, echo_at = "sso" })
    local s <close> = session()
    local err, line = refused(s, "sso")
    local access, jwt = sent_to("/gw/api/v1/sso-sessions")
    assert.truthy(access)
    assert.truthy(jwt)
    assert.matches("the request was: Authorization: Bearer [redacted]", line, 1, true)
    local json_line = require("ibkr.cli.out").json(require("ibkr.cli.report").plain_error(err))
    assert_clean(table.concat(strings(err), "\n") .. json_line,
      { access, jwt, jwt:match("%.([^.]+)$") })
  end)

  it("keeps the SSO session's bearer out of an API error that echoes it: errors and trace events", function()
    local events = {}
    local s <close> = session({ trace = function(ev) events[#events + 1] = ev end, trace_body = true })
    assert.truthy(s:tickle()) -- an SSO session
    m:oauth2({ echo = 1, echo_at = "api" })
    local res, err = s:request("GET", "/iserver/accounts")
    assert.is_nil(res)
    assert.equal(400, err.status)
    local bearer = sent_to("/iserver/accounts")
    assert.truthy(bearer)
    assert.matches("Authorization: Bearer [redacted]", tostring(err), 1, true)
    local json_line = require("ibkr.cli.out").json(require("ibkr.cli.report").plain_error(err))
    assert_clean(table.concat(strings(err), "\n") .. json_line .. table.concat(strings(events), "\n"),
      { bearer })
    assert.equal(400, events[#events].status) -- the event of the echo was traced
  end)
end)

------------------------------------------------------------------------------------------------

describe("oauth2 secrets", function()
  local m
  setup(function() m = oauth2_mock(false) end)
  teardown(function() if m then m:stop() end end)

  it("never shows a key or token in tostring, and wipes them on close", function()
    local s = m:oauth2_session{ pacing = false }
    assert.truthy(s:tickle())
    local o = s._oauth
    local bearer = o.session.header:sub(8)
    local key = read(m:oauth2().client.private_key_file)
    local shown = tostring(s) .. tostring(o) .. tostring(o._key)
    assert_clean(shown, { bearer, o.access and o.access.header:sub(8), key:match("\n(%S+)\n") })
    assert.matches("RSA 2048 bits", tostring(o._key))
    s:close()
    assert.is_true(o._key:closed())
    assert.is_nil(o.session)
    assert.is_nil(o.access)
    assert.matches("closed", tostring(o._key))
    assert.has_error(function() o._key:sign("{}", "{}") end)
    assert.equal("closed", (select(2, s:tickle())).kind)
    assert.is_nil(o:websocket_auth())
  end)

  it("gives the push channel its credentials (bearer_token) once a session is open", function()
    local s <close> = m:oauth2_session{ pacing = false }
    assert.is_nil(s._oauth:websocket_auth())
    assert.truthy(s:tickle())
    local a = s._oauth:websocket_auth()
    assert.equal(s._oauth.session.header, "Bearer " .. a.query.bearer_token)
    assert.equal(s._oauth.session.header, a.headers.Authorization)
  end)
end)

------------------------------------------------------------------------------------------------

describe("oauth2 mock gateway", function()
  it("never overwrites an existing file of the test client", function()
    for _, name in ipairs({ "client.pem", "oauth2.conf" }) do
      local dir = tmp .. "/keep-" .. name
      assert(sh("mkdir -m 700 " .. q(dir)))
      write(dir .. "/" .. name, "keep me\n")
      local m, err = mock.start{ tls = false, oauth2 = { dir = dir, key_bits = 2048 } }
      if m then m:stop() end
      assert.is_nil(m)
      assert.matches(name .. ": exists (never overwritten)", err, 1, true)
      assert.equal("keep me\n", read(dir .. "/" .. name))
      local ls = sh("ls " .. q(dir))
      assert.equal(name .. "\n", ls) -- what this start wrote is gone again
    end
  end)

  it("checks every client assertion and bearer itself", function()
    local dir = tmp .. "/checks"
    local m <close> = oauth2_mock(false, { oauth2 = { dir = dir, key_bits = 2048 } })
    local client = m:oauth2().client
    local key = prim.jwt_key{ private_key_file = client.private_key_file }
    local now = math.floor(prim.now())
    local function jwt(header, claims)
      local h = { alg = "RS256", typ = "JWT", kid = client.key_id }
      local c = { iss = client.client_id, sub = client.client_id, aud = "/token", exp = now + 20,
        iat = now - 10, jti = oauth2.jti() }
      for k, v in pairs(header or {}) do h[k] = v ~= false and v or nil end
      for k, v in pairs(claims or {}) do c[k] = v ~= false and v or nil end
      return key:sign(require("cjson").encode(h), require("cjson").encode(c))
    end
    local function post(assertion, form)
      local body = form or oauth2.token_form(assertion)
      local r = assert(m:request("POST", "/oauth2/api/v1/token", { body = body,
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }))
      return r.status, mock.json(r)
    end
    local cases = {
      { { alg = "HS256" }, nil, "alg must be RS256" },
      { { kid = "other" }, nil, "unknown kid" },
      { nil, { aud = "https://api.ibkr.com/oauth2/api/v1/token" }, "aud must be /token" },
      { nil, { sub = "x" }, "sub is not the client_id" },
      { nil, { exp = now - 100, iat = now - 120 }, "expired" },
      { nil, { iat = now + 100, exp = now + 120 }, "not yet valid" },
      { nil, { iat = now - 10, exp = now + 3600 }, "lives too long" },
      { nil, { exp = false }, "exp and iat must be numbers" },
    }
    for _, c in ipairs(cases) do
      local status, answer = post(jwt(c[1], c[2]))
      assert.equal(401, status)
      assert.equal("invalid_client", answer.error)
      assert.matches(c[3], answer.error_description, 1, true)
    end
    local good = jwt()
    local status, answer = post(good)
    assert.equal(200, status)
    assert.equal(3600, answer.expires_in)
    status, answer = post(good) -- the same assertion again
    assert.equal(401, status)
    assert.equal("jti replayed", answer.error_description)
    assert.equal(200, (post(jwt(nil, { jti = false }))))
    local tampered = good:gsub("%.[^.]+$", "." .. prim.b64url_encode(string.rep("\0", 256)))
    answer = select(2, post(tampered))
    assert.matches("signature does not verify", answer.error_description)
    status, answer = post(nil, "grant_type=password")
    assert.equal(400, status)
    assert.equal("unsupported_grant_type", answer.error)
    -- the API: no bearer, a bogus bearer
    local r = assert(m:request("POST", "/v1/api/tickle"))
    assert.equal(401, r.status)
    r = assert(m:request("POST", "/v1/api/tickle", { headers = { Authorization = "Bearer abc" } }))
    assert.equal(401, r.status)
    key:close()
  end)
end)

------------------------------------------------------------------------------------------------

describe("ibkr-session --oauth2-config", function()
  local m, dir, conf
  setup(function()
    dir = tmp .. "/cli"
    -- every run opens its own SSO session: here each starts ready (a real flow is below)
    m = oauth2_mock(false, { state = "ready", oauth2 = { dir = dir, key_bits = 2048 } })
    conf = dir .. "/oauth2.conf"
  end)
  teardown(function() if m then m:stop() end end)

  it("runs the session commands with the file's URLs, never printing a secret", function()
    local key = read(dir .. "/client.pem")
    for _, args in ipairs({ { "status" }, { "--json", "tickle" }, { "validate" },
        { "--json", "request", "GET", "/iserver/accounts" }, { "logout" } }) do
      local a = { "--oauth2-config", conf }
      for _, v in ipairs(args) do a[#a + 1] = v end
      local code, out, err = run(a)
      assert.equal(0, code, table.concat(args, " ") .. ": " .. out .. err)
      assert_clean(out .. err, { key:match("\n(%S+)\n") })
    end
  end)

  it("reports a refusal as kind auth with IBKR's reason and the hint, JSON too", function()
    m:oauth2_fault{ kind = "refused", error = "invalid_client", description = "unknown client", count = 2 }
    local code, out, err = run({ "--oauth2-config", conf, "tickle" })
    assert.equal(1, code)
    assert.matches("invalid_client: unknown client", err, 1, true)
    assert.matches("hint: .*midnight", err)
    assert.equal("", out)
    code, out = run({ "--json", "--oauth2-config", conf, "tickle" })
    assert.equal(1, code)
    local doc = require("cjson").decode(out)
    assert.equal("auth", doc.error.kind)
    assert.equal("invalid_client", doc.error.data.error)
    assert.matches("midnight", doc.hint)
  end)

  it("refuses a config open to others, unknown names, both configs, --insecure off loopback", function()
    local open = dir .. "/open.conf"
    write(open, read(conf), "644")
    local code, out, err = run({ "--oauth2-config", open, "status" })
    assert.equal(64, code)
    assert.matches("group or others", err)
    assert.equal("", out)
    write(dir .. "/bad.conf", "client_id = X\nprivate_key = inline\n")
    code, out, err = run({ "--oauth2-config", dir .. "/bad.conf", "status" })
    assert.equal(64, code)
    assert.matches("bad.conf:2: unknown name 'private_key'", err, 1, true)
    assert.equal("", out)
    code, out, err = run({ "--oauth2-config", conf, "--oauth-config", conf, "status" })
    assert.equal(64, code)
    assert.matches("exclude each other", err)
    assert.equal("", out)
    code, out, err = run({ "--url", "https://api.ibkr.com/v1/api", "--insecure", "--oauth2-config", conf,
      "status" })
    assert.equal(64, code)
    assert.matches("TLS verification", err)
    assert.equal("", out)
  end)
end)
