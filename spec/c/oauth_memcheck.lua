-- oauth_memcheck.lua [ROUNDS]: every path of src/oauth.c, ROUNDS (default 20) times, for
-- `valgrind --leak-check=full lua5.4 spec/c/oauth_memcheck.lua` (make valgrind-oauth, part of make
-- valgrind): signers from PEM text and from files, the handshake (challenge, RSA-SHA256, finish with a
-- good and a wrong token signature and an out-of-range B), request signing, forget, close, signers
-- left to the GC, every refusal of core.oauth.new, and the whole flow of an ibkr session against the
-- mock gateway in OAuth mode. OAuth 2.0: JWT keys from PEM text and files, RS256 JWTs checked with
-- rsa_verify, base64url both ways (good and malformed input), every refusal of core.oauth.jwt_key,
-- closed and collected keys, write_private (new and existing files), and an OAuth 2.0 session against
-- the mock's --oauth2 mode through renewals and refused and hostile token answers. Exits non-zero
-- when an outcome is not the expected one.
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
local ibkr = require("ibkr")
local oauth = require("ibkr.oauth")
local mock = require("spec.helpers.mock")
local o = ibkr.core.oauth

local ROUNDS = tonumber(arg[1]) or 20
local PRIME = require("ibkr.mock.oauth").PRIME
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -m 700 " .. dir))

local function write(path, text, mode)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  assert(os.execute("chmod " .. mode .. " " .. path))
end

local function expect_raise(t, what)
  local ok, err = pcall(o.new, t)
  assert(not ok and tostring(err):find(what, 1, true),
    "expected a refusal naming " .. what .. ": " .. tostring(err))
end

-- 1024-bit keys: valgrind makes RSA key generation slow; the code paths are the same
local sig_priv, sig_pub = o.rsa_generate(1024)
local enc_priv, enc_pub = o.rsa_generate(1024)
local secret = o.random(32)
local cfg = {
  signature_key = sig_priv, encryption_key = enc_priv, dh_prime = PRIME, dh_generator = 2,
  access_token_secret = o.b64encode(o.rsa_encrypt(enc_pub, secret)),
}
write(dir .. "/sig.pem", sig_priv, "600")
write(dir .. "/enc.pem", enc_priv, "600")
write(dir .. "/open.pem", sig_priv, "644")

-- the server's side of one handshake: B and the token's signature for challenge A
local function server(A, key)
  local b = o.hex(o.random(32))
  local K = o.modexp("2", b, PRIME)
  local shared = o.modexp(A, b, PRIME)
  if #shared % 2 == 1 then shared = "0" .. shared end
  local kb = shared:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  if kb:byte(1) >= 0x80 then kb = "\0" .. kb end
  local lst = o.hmac("sha1", kb, secret)
  return K, o.hex(o.hmac("sha1", lst, key)), lst
end

local function handshake(c)
  local A = c:challenge()
  local sig = o.b64decode(c:sign_rsa("POST&base"))
  assert(o.rsa_verify(sig_pub, o.hex(secret) .. "POST&base", sig), "RSA signature does not verify")
  local B, lsig, lst = server(A, "CONSUMER1")
  assert(c:finish(B, lsig, "CONSUMER1"))
  assert(c:sign("base") == o.b64encode(o.hmac("sha256", lst, "base")), "HMAC-SHA256 differs")
  return B, lsig
end

for round = 1, ROUNDS do
  local c = o.new(cfg)
  local B, lsig = handshake(c)
  c:challenge()
  assert(select(2, c:finish(B, "00" .. lsig:sub(3), "CONSUMER1")):find("does not match"))
  c:challenge()
  assert(select(2, c:finish("1", lsig, "CONSUMER1")):find("out of range"))
  assert(select(2, c:finish(B, lsig, "CONSUMER1")):find("no handshake"))
  c:forget()
  assert(not c:has_token() and tostring(c) == "ibkr.oauth (no token)")
  c:close()
  c:close()
  local f = o.new{ signature_key_file = dir .. "/sig.pem", encryption_key_file = dir .. "/enc.pem",
    access_token_secret = cfg.access_token_secret, dh_prime = PRIME, dh_generator = 2 }
  handshake(f)
  f = nil -- luacheck: ignore f
  o.new(cfg):challenge() -- left to the GC mid-handshake
  expect_raise({ signature_key_file = dir .. "/open.pem", encryption_key = enc_priv,
    access_token_secret = cfg.access_token_secret, dh_prime = PRIME }, "group or others")
  expect_raise({ signature_key = "junk", encryption_key = enc_priv,
    access_token_secret = cfg.access_token_secret, dh_prime = PRIME }, "signature_key")
  expect_raise({ signature_key = sig_priv, encryption_key = enc_priv,
    access_token_secret = "!!", dh_prime = PRIME }, "access_token_secret")
  expect_raise({ signature_key = sig_priv, encryption_key = sig_priv,
    access_token_secret = cfg.access_token_secret, dh_prime = PRIME }, "does not decrypt")
  expect_raise({ signature_key = sig_priv, encryption_key = enc_priv,
    access_token_secret = cfg.access_token_secret, dh_prime = "zz" }, "dh_prime")
  expect_raise({ signature_key = sig_priv, encryption_key = enc_priv,
    access_token_secret = cfg.access_token_secret, dh_prime = PRIME, dh_generator = 1 }, "dh_generator")
  assert(o.modexp("zz", "1", "3") == nil and o.b64decode("abc") == nil)
  collectgarbage()
  if round % 5 == 0 then io.write(".") io.flush() end
end

-- OAuth 2.0: the JWT key and its primitives
local jwt_priv, jwt_pub = o.rsa_generate(2048)
local small = o.rsa_generate(1024)
write(dir .. "/jwt.pem", jwt_priv, "600")
write(dir .. "/jwt_open.pem", jwt_priv, "644")
local function expect_jwt_raise(t, what)
  local ok, err = pcall(o.jwt_key, t)
  assert(not ok and tostring(err):find(what, 1, true), "expected a refusal naming " .. what .. ": "
    .. tostring(err))
end
for round = 1, ROUNDS do
  local keys = { o.jwt_key{ private_key = jwt_priv }, o.jwt_key{ private_key_file = dir .. "/jwt.pem" } }
  for _, k in ipairs(keys) do
    local jwt = k:sign('{"alg":"RS256","typ":"JWT","kid":"k"}', '{"iss":"c","n":' .. round .. '}')
    local h, c, sig = jwt:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
    assert(o.rsa_verify(jwt_pub, h .. "." .. c, assert(o.b64url_decode(sig))), "RS256 does not verify")
    assert(o.b64url_decode(h) == '{"alg":"RS256","typ":"JWT","kid":"k"}')
    assert(k:bits() == 2048 and tostring(k) == "ibkr.jwt (RSA 2048 bits)")
    k:close()
    k:close()
    assert(not pcall(k.sign, k, "{}", "{}") and tostring(k) == "ibkr.jwt (closed)")
  end
  o.jwt_key{ private_key = jwt_priv }:sign("{}", "{}") -- left to the GC
  expect_jwt_raise({ private_key = small }, "1024 bits")
  expect_jwt_raise({ private_key = "junk" }, "private_key")
  expect_jwt_raise({ private_key_file = dir .. "/jwt_open.pem" }, "group or others")
  expect_jwt_raise({ private_key_file = dir .. "/none.pem" }, "private_key_file")
  expect_jwt_raise({}, "'private_key' or 'private_key_file' is required")
  for _, bad in ipairs({ "", "a", "a=", "a+b", "ab/c", string.rep("A", 5) }) do
    assert(o.b64url_decode(bad) == nil, "accepted " .. bad)
  end
  local r = o.random(100)
  assert(o.b64url_decode(o.b64url_encode(r)) == r)
  assert(o.write_private(dir .. "/w" .. round, "secret") == true)
  assert(select(2, o.write_private(dir .. "/w" .. round, "other")):find("exists", 1, true))
  collectgarbage()
end

-- the whole flow through an ibkr session against the mock in OAuth mode (the mock runs outside
-- valgrind: it is a child process of its own)
local m = assert(mock.start{ tls = false, pacing = false,
  args = { "--oauth", "--oauth-dir", dir .. "/mock" } })
local mcfg = assert(oauth.read_config(dir .. "/mock/oauth.conf"))
local s = ibkr.new{ base_url = m.url, oauth = mcfg, pacing = false, timeout = 60 }
assert(s:init_brokerage())
for _ = 1, ROUNDS do assert(s:tickle()) end
m:control("POST", "/__mock/oauth", { expire = true })
assert(s:tickle())
s:close()
m:stop()

-- OAuth 2.0 against the mock's --oauth2 mode: the flow, renewals, refusals and hostile answers
m = assert(mock.start{ tls = false, pacing = false, init_delay = 0,
  oauth2 = { dir = dir .. "/mock2", key_bits = 2048 } })
s = m:oauth2_session{ pacing = false, timeout = 60, retries = 0 }
assert(s:init_brokerage())
for _ = 1, ROUNDS do assert(s:tickle()) end
for _, fault in ipairs({ { kind = "refused" }, { kind = "malformed" }, { kind = "expired" },
    { kind = "missing" }, { kind = "huge", bytes = 100000 }, { kind = "refused", endpoint = "sso" } }) do
  m:oauth2({ expire = "all", fault = fault })
  local res, err = s:tickle()
  assert(res == nil and err.kind == "auth", tostring(err))
  s._call.streak.token, s._call.token_until = nil, nil -- the backoff is policy; the next renewal at once
end
m:oauth2({ echo = 1 })
assert(select(2, s:tickle()).kind == "auth")
s._call.streak.token, s._call.token_until = nil, nil
assert(s:tickle())
m:oauth2({ expire = "sessions" })
assert(s:tickle())
s:close()
m:stop()
os.execute("rm -rf " .. dir)
print("\noauth memcheck: " .. ROUNDS .. " rounds ok")
