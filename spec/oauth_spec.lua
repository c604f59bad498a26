-- OAuth 1.0a: config checks, the worked example of docs/oauth.md (values computed with
-- Python, an implementation apart from ours), signatures checked with the openssl command line, and
-- the whole flow against the mock gateway in OAuth mode (which verifies every signature).
local ibkr = require("ibkr")
local oauth = require("ibkr.oauth")
local mock = require("spec.helpers.mock")
local prim = ibkr.core.oauth

-- the openssl command line, without the sanitizer preload of `make asan`
local function sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD sh -c '" .. cmd:gsub("'", "'\\''") .. "' 2>&1", "r"))
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end

local q = require("spec.helpers.raw").q

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

local function fromhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end
local function unquote(s) return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)) end

-- the worked example: `name = value` lines of the first code block after "### Worked example"
local function worked_example()
  local doc = read("docs/oauth.md")
  local block = doc:match("### Worked example.-```\n(.-)```")
  local t = {}
  for k, v in block:gmatch("([%w_]+) = ([^\n]+)") do t[k] = v end
  return t
end

-- A consumer made with the openssl command line only: two RSA keys, the secret encrypted with
-- PKCS#1 v1.5 and base64'd by openssl. secret: raw bytes.
local function openssl_consumer(dir, secret)
  assert(sh("mkdir -p " .. q(dir)))
  for _, name in ipairs({ "sig", "enc" }) do
    local out, ok = sh(string.format("umask 077 && openssl genrsa -out %s/%s.pem 2048 && "
      .. "openssl rsa -in %s/%s.pem -pubout -out %s/%s_pub.pem", q(dir), name, q(dir), name, q(dir), name))
    assert(ok, out)
  end
  write(dir .. "/secret.bin", secret)
  local b64, ok = sh(string.format("openssl pkeyutl -encrypt -pubin -inkey %s/enc_pub.pem "
    .. "-pkeyopt rsa_padding_mode:pkcs1 -in %s/secret.bin | openssl base64 -A", q(dir), q(dir)))
  assert(ok, b64)
  return {
    signature_key_file = dir .. "/sig.pem", encryption_key_file = dir .. "/enc.pem",
    access_token_secret = b64,
  }
end

local tmp = os.tmpname()
os.remove(tmp)
local EX = worked_example()

local function example_config(extra)
  local c = openssl_consumer(tmp .. "/ex", fromhex(EX.secret_hex))
  local cfg = {
    consumer_key = EX.consumer_key, access_token = EX.access_token, realm = EX.realm,
    dh_prime = EX.dh_prime, dh_generator = tonumber(EX.dh_generator),
    access_token_secret = c.access_token_secret,
    signature_key_file = c.signature_key_file, encryption_key_file = c.encryption_key_file,
  }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return cfg
end

teardown(function() os.execute("rm -rf " .. q(tmp)) end)

describe("oauth config", function()
  local base
  setup(function() base = example_config() end)
  local function with(changes)
    local c = {}
    for k, v in pairs(base) do c[k] = v end
    for k, v in pairs(changes) do
      if v == "nil" then c[k] = nil else c[k] = v end
    end
    return c
  end
  local function raises(cfg, field, opts)
    local o = { base_url = "https://api.ibkr.com/v1/api", oauth = cfg }
    for k, v in pairs(opts or {}) do o[k] = v end
    local ok, err = pcall(ibkr.new, o)
    assert.is_false(ok)
    assert.matches("'" .. field .. "'", err, 1, true)
    assert.not_matches(base.access_token_secret, err, 1, true)
    return err
  end

  it("raises at ibkr.new naming each missing field", function()
    for _, k in ipairs({ "consumer_key", "access_token", "access_token_secret", "dh_prime" }) do
      raises(with({ [k] = "nil" }), k)
    end
    raises(with({ signature_key_file = "nil" }), "signature_key")
    raises(with({ encryption_key_file = "nil" }), "encryption_key")
  end)

  it("raises naming malformed fields", function()
    raises(with({ dh_prime = "xyz" }), "dh_prime")
    raises(with({ dh_prime = "1234" }), "dh_prime") -- too small
    raises(with({ dh_generator = "two" }), "dh_generator")
    raises(with({ dh_generator = 1 }), "dh_generator")
    raises(with({ access_token_secret = "not base64!" }), "access_token_secret")
    raises(with({ access_token_secret = prim.b64encode("garbage that is no ciphertext") }),
      "access_token_secret")
    raises(with({ consumer_key = 'a"b' }), "consumer_key")
    raises(with({ consumer_key = 42 }), "consumer_key")
    raises(with({ signature_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" }),
      "signature_key")
    raises(with({ signature_key_file = "nil", signature_key = "not pem" }), "signature_key")
    raises(with({ encryption_key_file = tmp .. "/nonexistent.pem" }), "encryption_key_file")
    raises(with({ bogus = "x" }), "bogus")
  end)

  it("refuses a key file readable by others, naming it", function()
    local f = tmp .. "/ex/open.pem"
    write(f, read(base.signature_key_file), "644")
    local err = raises(with({ signature_key_file = f }), "signature_key_file")
    assert.matches("group or others", err)
    assert.not_matches("PRIVATE KEY", err)
  end)

  it("accepts the PEM text forms", function()
    local s = ibkr.new{ base_url = "https://api.ibkr.com/v1/api", oauth = with({
      signature_key_file = "nil", signature_key = read(base.signature_key_file),
      encryption_key_file = "nil", encryption_key = read(base.encryption_key_file) }) }
    s:close()
  end)

  it("keeps TLS verification on for non-loopback hosts", function()
    local verr = select(2, pcall(ibkr.new,
      { base_url = "https://api.ibkr.com/v1/api", verify = false, oauth = base }))
    assert.matches("TLS verification", verr)
    local ok, err = pcall(ibkr.new, { base_url = "http://api.ibkr.com/v1/api", oauth = base })
    assert.is_false(ok)
    assert.matches("https", err)
    -- loopback (the mock) keeps the usual automatic rule
    ibkr.new{ base_url = "https://127.0.0.1:5000/v1/api", verify = false, oauth = base }:close()
  end)
end)

describe("oauth worked example (docs/oauth.md)", function()
  local signer, dir
  setup(function()
    dir = tmp .. "/ex"
    signer = oauth.new(example_config(), "https://api.ibkr.com/v1/api")
  end)
  teardown(function() if signer then signer:close() end end)

  it("builds the token request's base string and challenge, RSA-SHA256 signed over prepend + base", function()
    signer.nonce = function() return EX.lst_nonce end
    signer.time = function() return tonumber(EX.lst_timestamp) end
    local copts, base = signer:token_request(EX.dh_a)
    assert.equal(EX.lst_base_string, base)
    local h = copts.headers.Authorization
    assert.matches('diffie_hellman_challenge="' .. EX.challenge .. '"', h, 1, true)
    assert.matches('^OAuth realm="limited_poa", diffie_hellman_challenge=', h)
    -- the signature checked by openssl against the public key
    local sig = unquote(h:match('oauth_signature="([^"]+)"'))
    write(dir .. "/sig.b64", sig)
    write(dir .. "/msg.txt", EX.secret_hex .. base)
    local out, ok = sh(string.format("openssl base64 -d -A -in %s/sig.b64 -out %s/sig.bin && "
      .. "openssl dgst -sha256 -verify %s/sig_pub.pem -signature %s/sig.bin %s/msg.txt",
      q(dir), q(dir), q(dir), q(dir), q(dir)))
    assert.is_true(ok, out)
    assert.matches("Verified OK", out)
  end)

  it("derives the token (its signature must match) and signs a request as the example says", function()
    local ok, err = signer:accept_token({
      diffie_hellman_response = EX.response, live_session_token_signature = EX.live_session_token_signature,
      live_session_token_expiration = math.floor((prim.now() + 3600) * 1000),
    }, 0)
    assert.is_nil(err)
    assert.is_true(ok)
    signer.nonce = function() return EX.nonce end
    signer.time = function() return tonumber(EX.timestamp) end
    local copts = signer:sign("POST", "/tickle", { headers = { X = "1" } })
    assert.equal(EX.authorization, copts.headers.Authorization)
    assert.equal("1", copts.headers.X)
  end)

  it("agrees with openssl on the token and the request HMAC", function()
    -- LST = HMAC-SHA1(00 || K, secret)
    local out = sh(string.format("openssl dgst -sha1 -mac HMAC -macopt hexkey:00%s -binary %s/secret.bin "
      .. "| openssl base64 -A", EX.shared_key, q(dir)))
    assert.equal(EX.live_session_token, out)
    local lsthex = sh("printf %s " .. q(EX.live_session_token)
      .. " | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \\n'")
    write(dir .. "/base.txt", EX.base_string)
    out = sh(string.format("openssl dgst -sha256 -mac HMAC -macopt hexkey:%s -binary %s/base.txt "
      .. "| openssl base64 -A", lsthex, q(dir)))
    assert.equal(EX.signature, out)
    out = sh(string.format("printf %%s %s | openssl dgst -sha1 -mac HMAC -macopt hexkey:%s -r",
      EX.consumer_key, lsthex))
    assert.equal(EX.live_session_token_signature, out:match("^(%x+)"))
  end)

  it("refuses a token whose signature does not match, keeping the one in use", function()
    signer:token_request(EX.dh_a)
    local ok, err = signer:accept_token({
      diffie_hellman_response = EX.response, live_session_token_signature = string.rep("0", 40),
      live_session_token_expiration = 1,
    }, 0)
    assert.is_nil(ok)
    assert.equal("auth", err.kind)
    assert.matches("live_session_token_signature", err.message)
    signer.nonce = function() return EX.nonce end
    signer.time = function() return tonumber(EX.timestamp) end
    assert.equal(EX.authorization, signer:sign("POST", "/tickle").headers.Authorization)
  end)

  it("signs the URL without query, default port and case, and takes no secret into tostring", function()
    assert.equal("https://api.ibkr.com/v1/api/tickle",
      oauth.signed_url("HTTPS://API.IBKR.COM:443/v1/api/", "/tickle?x=1"))
    assert.equal("http://[::1]:5000/v1/api/x", oauth.signed_url("http://[::1]:5000/v1/api", "/x"))
    assert.equal("a%2Bb+c%3D%2F~%22", oauth.quote_plus('a+b c=/~"'))
    local s = tostring(signer) .. tostring(signer._c)
    assert.not_matches(EX.live_session_token, s, 1, true)
    assert.not_matches(EX.secret_hex, s, 1, true)
  end)

  it("wipes everything on close", function()
    local c = signer._c
    signer:close()
    assert.is_true(c:closed())
    assert.is_false(c:has_token())
    assert.matches("closed", tostring(c))
    assert.has_error(function() c:sign("x") end)
    signer = nil
  end)
end)

describe("the mock gateway's --oauth-dir", function()
  -- the names docs/oauth.md's own example gives the user's key files
  local USER = { ["private_signature.pem"] = "the user's own signature key\n",
    ["private_encryption.pem"] = "the user's own encryption key\n", ["oauth.conf"] = "# the user's\n" }

  local function start_in(d)
    return mock.start{ pacing = false, args = { "--oauth", "--oauth-dir", d } }
  end

  it("never overwrites a key file or a config there: the mock refuses to start, naming it", function()
    for name, text in pairs(USER) do
      local d = tmp .. "/own-" .. name
      assert(sh("mkdir -p " .. q(d)))
      write(d .. "/" .. name, text)
      local gw, err = start_in(d)
      if gw then gw:stop() end
      assert.is_nil(gw, "the mock started over " .. name)
      assert.matches(name .. " exists", err, 1, true)
      assert.are.equal(text, read(d .. "/" .. name))
      assert.are.equal(name .. "\n", select(1, sh("ls -A " .. q(d))), "it left other files there")
    end
  end)

  it("never writes through a symlink by those names, dangling or not", function()
    local d = tmp .. "/links"
    assert(sh("mkdir -p " .. q(d)))
    write(tmp .. "/target.pem", "the user's key elsewhere\n")
    assert(sh("ln -s " .. q(tmp .. "/target.pem") .. " " .. q(d .. "/private_signature.pem")))
    assert(sh("ln -s " .. q(tmp .. "/nowhere.pem") .. " " .. q(d .. "/private_encryption.pem")))
    local gw, err = start_in(d)
    if gw then gw:stop() end
    assert.is_nil(gw)
    assert.matches("exists", err)
    assert.are.equal("the user's key elsewhere\n", read(tmp .. "/target.pem"))
    assert.is_nil(io.open(tmp .. "/nowhere.pem"))
  end)

  it("writes the consumer into a new or empty directory, keys readable by the owner only", function()
    local d = tmp .. "/fresh/sub"
    local gw = assert(start_in(d))
    gw:stop()
    for name in pairs(USER) do
      assert.are.equal("-rw-------", (select(1, sh("stat -c %A " .. q(d .. "/" .. name))):gsub("\n", "")))
    end
    assert(oauth.read_config(d .. "/oauth.conf"))
  end)
end)

describe("oauth against the mock gateway in OAuth mode", function()
  local m, dir, cfg
  -- one OAuth mock per token lifetime (its RSA keys take a while to make), put back to its
  -- start-up state (gateway and OAuth: tokens, nonces, counters) each time a spec takes it
  local mocks = {}
  local function start(ttl)
    local got = mocks[ttl]
    if got then
      m, dir, cfg = got.m, got.dir, got.cfg
      m:reset()
      m:control("POST", "/__mock/oauth", { reset = true })
      return
    end
    dir = tmp .. "/mock" .. ttl -- each mock its own directory: it never overwrites a file
    assert(sh("mkdir -p " .. q(dir)))
    m = assert(mock.start{ pacing = false, args = { "--oauth", "--oauth-dir", dir, "--oauth-lst-ttl", ttl } })
    local base_url
    cfg, base_url = assert(oauth.read_config(dir .. "/oauth.conf"))
    assert.is_nil(base_url)
    mocks[ttl] = { m = m, dir = dir, cfg = cfg }
  end
  local function counters() return m:control("GET", "/__mock/oauth").counters end
  teardown(function()
    for _, got in pairs(mocks) do got.m:stop() end
  end)

  it("opens a brokerage session, keeps it alive across token expiry, logs out", function()
    start(3)
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, pacing = false }
    local st = s:health()
    assert.equal("unauthenticated", st)
    assert.truthy(s:init_brokerage())
    assert.truthy(s:wait_ready{ timeout = 20 })
    local states = {}
    local co = s:keepalive{ interval = 1, on_state = function(new) states[#states + 1] = new end }
    ibkr.run(co, { duration = 7 })
    s:stop()
    assert.equal("ready", states[#states])
    local c = counters()
    assert.is_true(c.lst_issued >= 2, "renewed before expiry: " .. c.lst_issued)
    assert.equal(0, c.rejected)
    assert.same({ status = true }, (s:logout()))
  end)

  it("renews a token the server dropped (401), once, and signs every retry afresh", function()
    start(3600)
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, pacing = false, retries = 2 }
    assert.truthy(s:tickle())
    m:control("POST", "/__mock/oauth", { expire = true })
    assert.truthy(s:tickle())
    local c = counters()
    assert.equal(2, c.lst_issued)
    assert.equal(1, c.rejected)
    -- a 503 then a retry: the mock refuses a reused nonce, so passing means a fresh signature
    m:fault{ kind = "status", status = 503, path = "/tickle", count = 1 }
    assert.truthy(s:tickle())
    assert.equal(1, counters().rejected)
    assert.equal(1, s:stats().retries)
  end)

  it("bounds the token request by the call's deadline (a server that never answers)", function()
    start(3600)
    -- a listening socket that nobody serves: the kernel accepts the connection, no answer comes
    local srv = assert(require("socket").bind("127.0.0.1", 0))
    finally(function() srv:close() end)
    local _, port = srv:getsockname()
    local s <close> = ibkr.new{ base_url = "http://127.0.0.1:" .. port .. "/v1/api", oauth = cfg,
      pacing = false, timeout = 60, retries = 2 }
    -- the session's own bounds are 60 s and more: only the call's 1 s deadline can end it sooner
    local t0 = ibkr.core.monotonic()
    local ok, err = s:wait_ready{ timeout = 1, init = false }
    local took = ibkr.core.monotonic() - t0
    assert.is_nil(ok)
    assert.is_true(took < 30, "the 1 s deadline, not the 60 s timeout, ended the token request: " .. took)
    assert.matches("timeout", tostring(err))
    assert.equal(0, s:stats().requests - s:stats().failures) -- nothing got an answer
  end)

  it("runs one handshake for several cooperative callers", function()
    start(3600)
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, pacing = false, cooperative = true }
    local results, cos = {}, {}
    for i = 1, 3 do
      cos[i] = coroutine.create(function() results[i] = { s:tickle() } end)
    end
    local alive = 3
    while alive > 0 do
      alive = 0
      local wait = 0.05
      for _, co in ipairs(cos) do
        if coroutine.status(co) ~= "dead" then
          local ok, secs = coroutine.resume(co)
          assert(ok, secs)
          if coroutine.status(co) ~= "dead" then
            alive = alive + 1
            wait = math.min(wait, tonumber(secs) or 0.01)
          end
        end
      end
      if alive > 0 then ibkr.core.sleep(wait) end
    end
    for i = 1, 3 do assert.truthy(results[i][1], tostring(results[i][2])) end
    local c = counters()
    assert.equal(1, c.lst_issued)
    assert.equal(0, c.rejected)
  end)

  it("renews once for a burst of 401s to requests signed with one token", function()
    start(3600)
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, pacing = false, cooperative = true }
    local function run_all(n)
      local cos, results = {}, {}
      for i = 1, n do cos[i] = coroutine.create(function() results[i] = { s:tickle() } end) end
      local alive = n
      while alive > 0 do
        alive = 0
        for _, co in ipairs(cos) do
          if coroutine.status(co) ~= "dead" then
            assert(coroutine.resume(co))
            if coroutine.status(co) ~= "dead" then alive = alive + 1 end
          end
        end
        if alive > 0 then ibkr.core.sleep(0.001) end
      end
      return results
    end
    assert.truthy(run_all(1)[1][1])
    m:control("POST", "/__mock/oauth", { expire = true }) -- every caller below gets a 401
    local results = run_all(20)
    for i = 1, 20 do assert.truthy(results[i][1], tostring(results[i][2])) end
    assert.equal(2, counters().lst_issued)
  end)

  it("refuses a wrong live_session_token_signature with kind auth, then recovers", function()
    start(3600)
    m:control("POST", "/__mock/oauth", { bad_lst_signature = 1 })
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, pacing = false }
    local res, err = s:tickle()
    assert.is_nil(res)
    assert.equal("auth", err.kind)
    assert.matches("live_session_token_signature", tostring(err))
    assert.truthy(s:tickle())
  end)

  it("gets kind auth with status 401 when the server refuses the token request's signature", function()
    start(3600)
    local other = openssl_consumer(dir .. "/other", "x")
    local bad = {}
    for k, v in pairs(cfg) do bad[k] = v end
    bad.signature_key_file = other.signature_key_file -- a key the server does not know
    local s <close> = ibkr.new{ base_url = m.url, oauth = bad, pacing = false }
    local res, err = s:auth_status()
    assert.is_nil(res)
    assert.equal("auth", err.kind)
    assert.equal(401, err.status)
    assert.equal("invalid signature", m:control("GET", "/__mock/oauth").last_rejection)
    assert.equal("auth", (select(2, s:health())).kind)
    for _, secret in ipairs({ cfg.access_token_secret, read(cfg.signature_key_file) }) do
      assert.not_matches(secret, tostring(err), 1, true)
    end
  end)

  it("answers 401 to unsigned, tampered and replayed requests", function()
    start(3600)
    local r = assert(m:request("POST", "/v1/api/tickle"))
    assert.equal(401, r.status)
    -- a valid signature, sent twice: the replay is refused
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, pacing = false }
    assert.truthy(s:tickle())
    local copts = s._oauth:sign("POST", "/tickle")
    local auth = copts.headers.Authorization
    r = assert(m:request("POST", "/v1/api/tickle", { headers = { Authorization = auth } }))
    assert.equal(200, r.status)
    r = assert(m:request("POST", "/v1/api/tickle", { headers = { Authorization = auth } }))
    assert.equal(401, r.status)
    assert.matches("nonce", r.body)
    -- signed for another path
    auth = s._oauth:sign("POST", "/logout").headers.Authorization
    r = assert(m:request("POST", "/v1/api/tickle", { headers = { Authorization = auth } }))
    assert.equal(401, r.status)
    assert.matches("invalid signature", r.body)
  end)

  it("serves ibkr-session --oauth-config FILE, never printing a secret", function()
    start(3600)
    local cli = require("ibkr.cli")
    local function run(args)
      local out, errs = {}, {}
      local io_ = {
        stdout = { write = function(_, ...) for _, v in ipairs({ ... }) do out[#out + 1] = v end end },
        stderr = { write = function(_, ...) for _, v in ipairs({ ... }) do errs[#errs + 1] = v end end },
      }
      local code = cli.main(args, io_)
      return code, table.concat(out), table.concat(errs)
    end
    local conf = dir .. "/oauth.conf"
    run({ "--url", m.url, "--oauth-config", conf, "init" })
    -- the mock starts unauthenticated: only the CLI's ssodh/init can make it ready
    local s <close> = ibkr.new{ base_url = m.url, oauth = cfg, pacing = false }
    assert.truthy(s:wait_ready{ timeout = 10, init = false })
    assert.equal(0, (run({ "--url", m.url, "--oauth-config", conf, "status" })))
    -- base_url from the file
    write(dir .. "/url.conf", read(conf) .. "base_url = " .. m.url .. "\n")
    assert.equal(0, (run({ "--oauth-config", dir .. "/url.conf", "tickle" })))
    local secrets = { cfg.access_token_secret, read(cfg.signature_key_file), read(cfg.encryption_key_file) }
    for _, args in ipairs({ { "status" }, { "--json", "tickle" }, { "validate" }, { "logout" } }) do
      local a = { "--url", m.url, "--oauth-config", conf }
      for _, v in ipairs(args) do a[#a + 1] = v end
      local code, out, err = run(a)
      assert.equal(0, code, out .. err)
      for _, secret in ipairs(secrets) do
        assert.not_matches(secret, out .. err, 1, true)
      end
    end
    -- a config readable by others is refused (usage error)
    write(dir .. "/open.conf", read(conf), "644")
    local code, out, err = run({ "--url", m.url, "--oauth-config", dir .. "/open.conf", "status" })
    assert.equal(64, code)
    assert.matches("group or others", err)
    assert.equal("", out)
    write(dir .. "/bad.conf", "consumer_key = X\nsignature_key = inline\n")
    code, out, err = run({ "--url", m.url, "--oauth-config", dir .. "/bad.conf", "status" })
    assert.equal(64, code)
    assert.matches("bad.conf:2: unknown name 'signature_key'", err, 1, true)
    assert.equal("", out)
    code, out, err = run({ "--url", "https://api.ibkr.com/v1/api", "--insecure", "--oauth-config", conf,
      "status" })
    assert.equal(64, code)
    assert.matches("TLS verification", err)
    assert.equal("", out)
  end)

  it("wipes the signer when the session closes", function()
    start(3600)
    local s = ibkr.new{ base_url = m.url, oauth = cfg, pacing = false }
    assert.truthy(s:tickle())
    local c = s._oauth._c
    assert.is_true(c:has_token())
    s:close()
    assert.is_true(c:closed())
    assert.is_false(c:has_token())
    assert.equal("closed", (select(2, s:tickle())).kind)
  end)
end)
