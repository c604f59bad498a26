-- ibkr.mock.oauth: the server side of IBKR's OAuth 1.0a for the mock gateway (`--oauth`).
-- A generated test consumer (RSA signature and encryption keys, an encrypted access token
-- secret, a Diffie-Hellman group), POST /oauth/live_session_token, and a check of every request's
-- signature: 401 when it is missing, bad, replayed, or made with an expired token.
--
-- The verification is written from the server's side and apart from the client's code
-- (ibkr/oauth.lua): the base string is rebuilt from the request as received (Host header, path,
-- Authorization parameters). It uses the crypto primitives of ibkr.core (core.oauth: HMAC, RSA
-- verify/encrypt/generate, modexp), which specs check against the openssl command line.
--
-- Control: GET /__mock/oauth -> the consumer (config file path, keys, secret...) and counters;
-- POST /__mock/oauth {lst_ttl = S, expire = true, bad_lst_signature = N, reset = true}.
local core = require("ibkr.core")
local files = require("ibkr.mock.files")
local socket = require("socket")
local json = require("ibkr.mock.json")
local response = require("ibkr.mock.response")

local M = {}
M.__index = M

-- RFC 3526 group 14 (2048-bit MODP), generator 2: a public, well-known group
M.PRIME = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E"
  .. "3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F40"
  .. "6B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24"
  .. "CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE"
  .. "3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
  .. "15728E5A8AACAA68FFFFFFFFFFFFFFFF"
M.LST_TTL = 86400        -- seconds a live session token lives (IBKR: about 24 h)
M.CLOCK_SKEW = 300       -- seconds an oauth_timestamp may differ from the mock's clock
M.LST_PATH = "/v1/api/oauth/live_session_token"

local o = core.oauth

local function wall() return socket.gettime() end

local CONSUMER_FILES = { "private_signature.pem", "private_encryption.pem", "oauth.conf" }

-- The consumer files: keys and oauth.conf (the CLI's --oauth-config format) in dir, each a new file
-- of mode 0600 (ibkr.mock.files): a file of the same name already there (the user's own key, say)
-- is never overwritten: the consumer is refused, and the files written so far are removed.
-- Returns true or nil, message.
local function write_consumer(self, dir)
  local c = self.consumer
  local texts = {
    c.signature_key, c.encryption_key,
    table.concat({
      "# OAuth test consumer of ibkr-mock-gateway (not a real IBKR consumer)",
      "consumer_key = " .. c.consumer_key,
      "access_token = " .. c.access_token,
      "access_token_secret = " .. c.access_token_secret,
      "signature_key_file = private_signature.pem",
      "encryption_key_file = private_encryption.pem",
      "dh_prime = " .. c.dh_prime,
      "dh_generator = " .. c.dh_generator,
      "realm = " .. c.realm,
      "",
    }, "\n"),
  }
  local list = {}
  for i, name in ipairs(CONSUMER_FILES) do list[i] = { name, texts[i] } end
  local ok, err = files.write_new(dir, list)
  if not ok then return nil, err end
  self.config_file = dir .. "/oauth.conf"
  return true
end

local function upper_letters(n)
  local out = {}
  for b in o.random(64):gmatch(".") do
    if #out < n and b:byte() < 234 then out[#out + 1] = string.char(65 + b:byte() % 26) end
  end
  return table.concat(out)
end

-- opts: dir (where the consumer files go; default a new private temporary directory, removed
-- by close), lst_ttl (seconds).
function M.new(opts)
  opts = opts or {}
  local why = opts.dir and files.taken(opts.dir, CONSUMER_FILES)
  if why then return nil, "--oauth-dir: " .. why end -- (before the seconds spent on keys)
  local self = setmetatable({ lst_ttl = opts.lst_ttl or M.LST_TTL }, M)
  local sig_priv, sig_pub = o.rsa_generate(2048)
  local enc_priv, enc_pub = o.rsa_generate(2048)
  self.secret = o.random(32)
  self.signature_public = sig_pub
  self.consumer = {
    consumer_key = upper_letters(9), access_token = o.hex(o.random(10)),
    access_token_secret = o.b64encode(o.rsa_encrypt(enc_pub, self.secret)),
    signature_key = sig_priv, encryption_key = enc_priv,
    dh_prime = M.PRIME:lower(), dh_generator = 2, realm = "limited_poa",
  }
  local dir, owned = files.open_dir(opts.dir, "ibkr-mock-oauth")
  if not dir then return nil, owned end
  self.dir, self.owned_dir = dir, owned and dir or nil
  local ok, err = write_consumer(self, dir)
  if not ok then return nil, "--oauth-dir: " .. tostring(err) end
  self:reset()
  return self
end

function M:reset()
  self.tokens = {}      -- { lst = bytes, expires = wall seconds }
  self.nonces = {}      -- nonce -> wall seconds first seen
  self.bad_lst_signature = 0
  self.counters = { lst_issued = 0, verified = 0, rejected = 0 }
  self.last_rejection = nil
end

function M:close()
  if self.owned_dir then files.remove(self.owned_dir) end
  self.owned_dir = nil
end

------------------------------------------------------------------------------------------------
-- Verification

local function unquote(s)
  return (s:gsub("%+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- RFC 3986 unreserved characters stay, everything else %XX (a space too: the client's values
-- never hold one; quote_plus and this agree on every other byte)
local function encode(s)
  return (s:gsub("[^%w_%.%-~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- Authorization: OAuth realm="…", k="v", … -> table of decoded values, or nil
local function parse_authorization(h)
  if not h or not h:match("^OAuth%s") then return nil end
  local t = {}
  for k, v in h:gmatch('([%w_]+)="([^"]*)"') do t[k] = unquote(v) end
  return t
end

-- The URL the client must have signed: https://host[:port]/path as the request reached us.
function M.request_url(_, req, tls)
  local host = (req.headers.host or ""):lower()
  local scheme = tls and "https" or "http"
  host = host:gsub(":" .. (tls and "443" or "80") .. "$", "")
  return scheme .. "://" .. host .. req.path
end

-- method & enc(url) & enc(sorted k=v joined by &), without realm and oauth_signature
function M.base_string(method, url, params)
  local keys = {}
  for k in pairs(params) do
    if k ~= "realm" and k ~= "oauth_signature" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local kv = {}
  for i, k in ipairs(keys) do kv[i] = k .. "=" .. params[k] end
  return method .. "&" .. encode(url) .. "&" .. encode(table.concat(kv, "&"))
end

-- The parameter checks shared by both signature methods; returns nil or the refusal text.
function M:check_params(p, method_name)
  local c, now = self.consumer, wall()
  if not p then return "missing or malformed OAuth Authorization header" end
  if p.realm ~= c.realm then return "wrong realm" end
  if p.oauth_consumer_key ~= c.consumer_key then return "invalid consumer" end
  if p.oauth_token ~= c.access_token then return "invalid token" end
  if p.oauth_signature_method ~= method_name then return "signature method must be " .. method_name end
  local ts = math.tointeger(tonumber(p.oauth_timestamp or ""))
  if not ts or math.abs(ts - now) > M.CLOCK_SKEW then return "timestamp out of range" end
  if not p.oauth_nonce or p.oauth_nonce == "" then return "missing nonce" end
  if self.nonces[p.oauth_nonce] then return "nonce already used" end
  if not p.oauth_signature then return "missing signature" end
  for n, t in pairs(self.nonces) do
    if now - t > 2 * M.CLOCK_SKEW then self.nonces[n] = nil end
  end
  self.nonces[p.oauth_nonce] = now
  return nil
end

function M:reject(why)
  self.counters.rejected = self.counters.rejected + 1
  self.last_rejection = why
  return response.json(401, { error = "OAuth: " .. why, statusCode = 401 })
end

-- K = A^b mod p as bytes: big-endian, a zero byte first when the top bit is set
local function key_bytes(khex)
  if #khex % 2 == 1 then khex = "0" .. khex end
  local bytes = khex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  if bytes:byte(1) >= 0x80 then bytes = "\0" .. bytes end
  return bytes
end

-- POST /oauth/live_session_token
function M:live_session_token(req, tls)
  local p = parse_authorization(req.headers.authorization)
  local why = self:check_params(p, "RSA-SHA256")
  if why then return self:reject(why) end
  local A = p.diffie_hellman_challenge
  if not A or not A:match("^%x+$") then return self:reject("missing diffie_hellman_challenge") end
  local base = M.base_string(req.method, self:request_url(req, tls), p)
  local sig = o.b64decode(p.oauth_signature)
  if not sig or not o.rsa_verify(self.signature_public, o.hex(self.secret) .. base, sig) then
    return self:reject("invalid signature")
  end
  local b = o.hex(o.random(32))
  local B = o.modexp(string.format("%x", self.consumer.dh_generator), b, M.PRIME)
  local K = o.modexp(A, b, M.PRIME)
  local lst = o.hmac("sha1", key_bytes(K), self.secret)
  local lst_sig = o.hex(o.hmac("sha1", lst, self.consumer.consumer_key))
  if self.bad_lst_signature > 0 then
    self.bad_lst_signature = self.bad_lst_signature - 1
    lst_sig = o.hex(o.hmac("sha1", "not the token", self.consumer.consumer_key))
  end
  local expires = wall() + self.lst_ttl
  self.tokens[#self.tokens + 1] = { lst = lst, expires = expires }
  self.counters.lst_issued = self.counters.lst_issued + 1
  return response.json(200, {
    diffie_hellman_response = B, live_session_token_signature = lst_sig,
    live_session_token_expiration = math.floor(expires * 1000),
  })
end

-- Any other API request: HMAC-SHA256 with a live token. nil when it passes.
function M:verify(req, tls)
  local p = parse_authorization(req.headers.authorization)
  local why = self:check_params(p, "HMAC-SHA256")
  if why then return self:reject(why) end
  local base = M.base_string(req.method, self:request_url(req, tls), p)
  local now, live = wall(), {}
  for _, t in ipairs(self.tokens) do
    if t.expires > now then
      live[#live + 1] = t
      if o.b64encode(o.hmac("sha256", t.lst, base)) == p.oauth_signature then
        self.tokens = live
        self.counters.verified = self.counters.verified + 1
        return nil
      end
    end
  end
  return self:reject(#live == 0 and "no live session token (expired or never obtained)"
    or "invalid signature")
end

------------------------------------------------------------------------------------------------
-- Control and dispatch

function M:describe()
  local t = {}
  for k, v in pairs(self.consumer) do t[k] = v end
  t.config_file, t.dir, t.lst_ttl = self.config_file, self.dir, self.lst_ttl
  t.counters, t.last_rejection, t.tokens = self.counters, self.last_rejection, #self.tokens
  return t
end

function M:control(req)
  if req.method == "GET" then return response.json(200, self:describe()) end
  if req.method ~= "POST" then
    return response.error(405, "Method Not Allowed", { { "Allow", "GET, POST" } })
  end
  local ok, t = pcall(json.decode, req.body ~= "" and req.body or "{}")
  if not ok or type(t) ~= "table" then return response.error(400, "body must be a JSON object") end
  if t.reset then self:reset() end
  if type(t.lst_ttl) == "number" and t.lst_ttl > 0 then self.lst_ttl = t.lst_ttl end
  if t.expire then self.tokens = {} end
  if type(t.bad_lst_signature) == "number" then self.bad_lst_signature = math.floor(t.bad_lst_signature) end
  return response.json(200, self:describe())
end

-- The mock's hook: a response for requests OAuth decides (control, the token endpoint, a
-- refused signature), nil for requests that go on to the gateway.
function M:handle(req, tls)
  if req.path == "/__mock/oauth" then return self:control(req) end
  if req.path:sub(1, 8) == "/__mock/" or req.path == "/__mock" then return nil end
  if req.path == M.LST_PATH then
    if req.method ~= "POST" then return response.error(405, "Method Not Allowed", { { "Allow", "POST" } }) end
    return self:live_session_token(req, tls)
  end
  return self:verify(req, tls)
end

-- Attaches OAuth mode to mock instance m (ibkr.mock.new): opts.oauth = { dir =, lst_ttl = }.
-- Without an explicit --state the session starts connected but unauthenticated, as IBKR's
-- does after a live session token: ssodh/init opens the brokerage session.
function M.attach(m, opts)
  local self, err = M.new(type(opts.oauth) == "table" and opts.oauth or {})
  if not self then return nil, err end
  m.oauth = self
  if not opts.state then
    m.gateway.initial.state = "unauthenticated"
    m.gateway:login("unauthenticated")
  end
  return self
end

return M
