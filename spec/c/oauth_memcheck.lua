-- oauth_memcheck.lua [ROUNDS]: every path of src/oauth.c, ROUNDS (default 20) times, for
-- `valgrind --leak-check=full lua5.4 spec/c/oauth_memcheck.lua` (make valgrind-oauth, part of make
-- valgrind): signers from PEM text and from files, the handshake (challenge, RSA-SHA256, finish with a
-- good and a wrong token signature and an out-of-range B), request signing, forget, close, signers
-- left to the GC, every refusal of core.oauth.new, and the whole flow of an ibkr session against the
-- mock gateway in OAuth mode. Exits non-zero when an outcome is not the expected one.
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
os.execute("rm -rf " .. dir)
print("\noauth memcheck: " .. ROUNDS .. " rounds ok")
