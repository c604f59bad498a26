-- ibkr.oauth: headless sessions with IBKR's OAuth 1.0a (first-party, self-service portal).
-- Config checking, the signature base string, the live session token (LST) handshake and the
-- Authorization header. The crypto and every secret live in C (core.oauth, src/oauth.c), wiped
-- when the session closes. The rules, with a worked example: docs/oauth.md.
-- ibkr/call.lua drives it: needs_token -> token_request -> (POST) -> accept_token, then sign.

local core = require("ibkr.core")
local state = require("ibkr.state")

local M = {}

M.LST_PATH = "/oauth/live_session_token"
M.DEFAULT_REALM = "limited_poa"
M.RENEW_MARGIN = 60 -- seconds before live_session_token_expiration the token is renewed (at most)

------------------------------------------------------------------------------------------------
-- Encoding rules (docs/oauth.md "Base string")

-- Python's urllib.parse.quote_plus: unreserved characters stay, a space becomes '+', every other
-- byte %XX with upper-case hex.
local ESCAPE = { [" "] = "+" }
for b = 0, 255 do
  local c = string.char(b)
  if not ESCAPE[c] then ESCAPE[c] = string.format("%%%02X", b) end
end
local function quote_plus(s)
  return (s:gsub("[^%w_%.%-~]", ESCAPE))
end
M.quote_plus = quote_plus

-- scheme, host (lower case, IPv6 in brackets), port ("" when none), rest of a URL
local function split_url(url)
  local scheme, host, rest = url:match("^(%a[%w+.-]*)://(%b[])(.*)$")
  if not scheme then scheme, host, rest = url:match("^(%a[%w+.-]*)://([^/:?#]+)(.*)$") end
  if not scheme then return nil end
  local port, after = rest:match("^:(%d*)(.*)$")
  return scheme:lower(), host:lower(), port or "", after or rest
end

-- The URL as signed: scheme and host in lower case, the default port left out, no query.
function M.signed_url(base_url, path)
  local scheme, host, port, rest = split_url(base_url)
  if not scheme then error("oauth: base_url has no scheme://host", 2) end
  if (scheme == "https" and port == "443") or (scheme == "http" and port == "80") then port = "" end
  rest = rest:gsub("/+$", "")
  return scheme .. "://" .. host .. (port ~= "" and ":" .. port or "") .. rest .. path:match("^[^?#]*")
end

-- METHOD & quote_plus(url) & quote_plus(k1=v1&k2=v2...), keys sorted, values as sent.
function M.base_string(method, url, params)
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys)
  local pairs_ = {}
  for i, k in ipairs(keys) do pairs_[i] = k .. "=" .. params[k] end
  return method .. "&" .. quote_plus(url) .. "&" .. quote_plus(table.concat(pairs_, "&"))
end

-- OAuth realm="…", then every parameter sorted by name as name="value".
function M.header(realm, params)
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = { 'OAuth realm="' .. realm .. '"' }
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. '="' .. params[k] .. '"' end
  return table.concat(parts, ", ")
end

------------------------------------------------------------------------------------------------
-- Configuration

-- name -> check(value) returning an error text or nil
local TOKEN_CHARS = "^[%w%-%._~]+$" -- they go unencoded into the header: unreserved characters only
local FIELDS = {
  consumer_key = "token", access_token = "token", access_token_secret = "base64",
  signature_key = "pem", signature_key_file = "string", encryption_key = "pem",
  encryption_key_file = "string", dh_prime = "hex", dh_generator = "integer", realm = "token",
}

local function check_field(k, v)
  local want = FIELDS[k]
  if want == "integer" then
    if math.type(v) ~= "integer" and not (math.type(v) == "float" and v == math.floor(v)) then
      return "must be an integer"
    end
    return nil
  end
  if type(v) ~= "string" then return "must be a string (got " .. type(v) .. ")" end
  if v == "" then return "must not be empty" end
  if want == "token" and not v:match(TOKEN_CHARS) then return "must use only letters, digits and -._~" end
  if want == "base64" and not v:match("^[%w+/]+=?=?$") then return "must be base64" end
  if want == "hex" and not v:match("^%x+$") then return "must be hexadecimal" end
  if want == "pem" and not v:find("-----BEGIN ", 1, true) then return "must be a PEM text" end
  return nil
end

local function is_loopback(host)
  host = host:gsub("^%[(.*)%]$", "%1")
  return host == "localhost" or host == "::1" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- What forbids sending OAuth credentials to `url` with the session's `verify`, or nil: a host that
-- is not loopback must be reached over https ("https") with TLS verification on ("verify").
-- Loopback hosts (the mock) keep the usual rules. Shared by OAuth 1.0a and 2.0 (ibkr/oauth2.lua).
function M.transport_refusal(url, verify)
  local scheme, host = split_url(url)
  if host and not is_loopback(host) then
    if scheme ~= "https" then return "https" end
    if verify == false then return "verify" end
  end
  return nil
end

-- Raises (at `level` above the caller) naming the field; never shows a value.
local function check_config(cfg, level)
  if type(cfg) ~= "table" then error("ibkr.new: option 'oauth' must be a table", level + 1) end
  for k, v in pairs(cfg) do
    if not FIELDS[k] then error("ibkr.new: oauth: unknown field '" .. tostring(k) .. "'", level + 1) end
    local why = check_field(k, v)
    if why then error("ibkr.new: oauth: '" .. k .. "' " .. why, level + 1) end
  end
  for _, k in ipairs({ "consumer_key", "access_token", "access_token_secret", "dh_prime" }) do
    if cfg[k] == nil then error("ibkr.new: oauth: '" .. k .. "' is required", level + 1) end
  end
  for _, k in ipairs({ "signature_key", "encryption_key" }) do
    local a, b = cfg[k] ~= nil, cfg[k .. "_file"] ~= nil
    if a == b then
      error(string.format("ibkr.new: oauth: '%s' or '%s_file' is required (one of them)", k, k), level + 1)
    end
  end
end

-- The config file of `ibkr-session --oauth-config FILE` (docs/oauth.md "Config file", the format
-- of ibkr/config_file.lua): names are the `oauth` fields (the *_file forms of the keys) plus
-- `base_url`. read_config(path) -> oauth_table, base_url_or_nil | nil, err; cli_apply(opts, path)
-- sets opts.oauth (and opts.base_url when nil) -> nil | err, for the CLI.
local CONFIG_NAMES = { base_url = "string", dh_generator = "integer" }
for k, want in pairs(FIELDS) do
  if want ~= "pem" and k ~= "dh_generator" then CONFIG_NAMES[k] = k:match("_file$") and "file" or "string" end
end

M.read_config, M.cli_apply = require("ibkr.config_file").loaders("oauth", CONFIG_NAMES, "oauth config")

------------------------------------------------------------------------------------------------
-- The signer of a session

local Signer = {}
Signer.__index = Signer
Signer.LST_PATH = M.LST_PATH

-- cfg: the `oauth` option; base_url, verify: the session's. Raises like ibkr.new.
function M.new(cfg, base_url, verify, level)
  level = (level or 1) + 1
  check_config(cfg, level)
  local refusal = M.transport_refusal(base_url, verify)
  if refusal == "https" then
    error("ibkr.new: oauth: base_url must be https for a non-loopback host", level)
  elseif refusal == "verify" then
    error("ibkr.new: oauth: TLS verification cannot be turned off for a non-loopback host", level)
  end
  local ok, c = pcall(core.oauth.new, {
    signature_key = cfg.signature_key, signature_key_file = cfg.signature_key_file,
    encryption_key = cfg.encryption_key, encryption_key_file = cfg.encryption_key_file,
    access_token_secret = cfg.access_token_secret, dh_prime = cfg.dh_prime,
    dh_generator = math.tointeger(cfg.dh_generator or 2),
  })
  if not ok then error("ibkr.new: " .. tostring(c), level) end
  return setmetatable({
    _c = c, base_url = base_url, consumer_key = cfg.consumer_key, access_token = cfg.access_token,
    realm = cfg.realm or M.DEFAULT_REALM, renew_at = nil, expires_ms = nil, fetching = nil,
    generation = 0, -- tokens accepted so far: a request signed with an older one says so
    time = core.oauth.now,       -- wall clock, seconds (oauth_timestamp; the token's expiry)
    nonce = M.nonce,
  }, Signer)
end

local ALNUM_BYTES = { ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"):byte(1, 62) }

-- 16 letters and digits from the CSPRNG (bytes >= 248 dropped: no modulo bias)
function M.nonce()
  local out, n = {}, 0
  while n < 16 do
    local bytes = { core.oauth.random(32):byte(1, 32) }
    for i = 1, 32 do
      local b = bytes[i]
      if b < 248 and n < 16 then
        n = n + 1
        out[n] = ALNUM_BYTES[b % 62 + 1]
      end
    end
  end
  return string.char(table.unpack(out))
end

function Signer:_params(method_name)
  return {
    oauth_consumer_key = self.consumer_key, oauth_nonce = self.nonce(),
    oauth_signature_method = method_name, oauth_timestamp = tostring(math.floor(self.time())),
    oauth_token = self.access_token,
  }
end

-- Marks a handshake in progress until `deadline` (monotonic); the returned value, held in a
-- to-be-closed variable, clears the mark however the handshake ends (coroutine.close included).
function Signer:fetching_until(deadline)
  self.fetching = deadline
  return setmetatable({}, { __close = function() self.fetching = nil end })
end

-- Whether a (new) token must be had before a request at monotonic time `now`.
function Signer:needs_token(now)
  return not self._c:has_token() or (self.renew_at ~= nil and now >= self.renew_at)
end

-- The per-call options of POST /oauth/live_session_token: a fresh DH challenge, signed with
-- RSA-SHA256 over prepend .. base string. `fixed_a`: the worked example's exponent (specs only).
function Signer:token_request(fixed_a)
  local p = self:_params("RSA-SHA256")
  p.diffie_hellman_challenge = self._c:challenge(fixed_a)
  local base = M.base_string("POST", M.signed_url(self.base_url, M.LST_PATH), p)
  p.oauth_signature = quote_plus(self._c:sign_rsa(base))
  return { headers = { Authorization = M.header(self.realm, p) } }, base
end

local function auth_error(message, err)
  return core.error{
    kind = "auth", message = message, method = "POST", path = M.LST_PATH,
    status = err and err.status, body = err and err.body, data = err and err.data, cause = err,
  }
end

-- Accepts the answer of POST /oauth/live_session_token at monotonic time `now`.
-- Returns true, or nil, err (kind "auth").
function Signer:accept_token(res, now)
  local b, sig, exp = res.diffie_hellman_response, res.live_session_token_signature,
    res.live_session_token_expiration
  if type(b) ~= "string" or type(sig) ~= "string" or type(exp) ~= "number" then
    return nil, auth_error("live session token answer lacks diffie_hellman_response, "
      .. "live_session_token_signature or live_session_token_expiration")
  end
  local ok, why = self._c:finish(b, sig, self.consumer_key)
  if not ok then return nil, auth_error("live session token refused: " .. why) end
  local lifetime = math.max(1, exp / 1000 - self.time())
  self.generation = self.generation + 1
  self.expires_ms = exp
  self.renew_at = now + lifetime - math.min(M.RENEW_MARGIN, lifetime / 10)
  return true
end

-- The renewal of ibkr/call.lua's signer interface: one POST /oauth/live_session_token through
-- `exchange` and its answer accepted. Returns true, or nil, err.
function Signer:renew(exchange, clock)
  local res, err = exchange("POST", self.LST_PATH, (self:token_request()))
  local ok
  if res then ok, err = self:accept_token(res, clock()) end
  if not ok then return nil, self:token_error(err) end
  return true
end

-- The error of a failed token request: HTTP answers become kind "auth" (the server refused the
-- handshake), with IBKR's own reason in the message ("refused: HTTP 401: invalid consumer": the
-- core's message of the answer); a 2xx body that is not JSON says what it was instead. Transport
-- errors (connect, timeout, tls...) keep their kind.
function Signer.token_error(_, err)
  if err.kind == "http" then
    return auth_error("live session token request refused: " .. tostring(err.message), err)
  elseif err.kind == "json" then
    return auth_error(string.format("live session token request answered HTTP %s with %s, not JSON",
      tostring(err.status or "2xx"), state.body_text(err.body)), err)
  end
  return err
end

-- Per-call options for one attempt of `method path`: copts plus a fresh Authorization header
-- (new nonce and timestamp), HMAC-SHA256 with the token. copts itself is not changed.
function Signer:sign(method, path, copts)
  local p = self:_params("HMAC-SHA256")
  local base = M.base_string(method, M.signed_url(self.base_url, path), p)
  p.oauth_signature = quote_plus(self._c:sign(base))
  local out, headers = {}, {}
  for k, v in pairs(copts or {}) do out[k] = v end
  for k, v in pairs(out.headers or {}) do headers[k] = v end
  headers.Authorization = M.header(self.realm, p)
  out.headers = headers
  out.generation = self.generation
  return out
end

-- Whether err says the server refused our token (then call.lua gets a new one, once). The
-- token is dropped only when `sent` (the attempt's copts) was signed with the token in use: a
-- burst of refusals of one token renews it once, not once each.
function Signer:refused(err, sent)
  if err.kind == "http" and err.status == 401 then
    if not sent or sent.generation == self.generation then self._c:forget() end
    return true
  end
  return false
end

-- What authenticates the push channel (the gateway's websocket) under OAuth 1.0a: IBKR takes the
-- access token in the upgrade's query (`oauth_token`), with the User-Agent its own OAuth client
-- sends (ibind; ibkr-conduit's IbkrWebSocketClient; ibkrdotnet's StreamingCredential). The
-- session's `api` cookie (the /tickle answer's session) is the push channel's own business.
function Signer:websocket_auth()
  return { query = { oauth_token = self.access_token }, headers = { ["User-Agent"] = "ClientPortalGW/1" } }
end

-- The secrets of this signer that go on the wire and an endpoint may echo (the consumer key, the
-- access token), for ibkr/redact.lua; the live session token and the access token secret never
-- leave C and are never sent.
function Signer:secrets()
  return { self.consumer_key, self.access_token }
end

function Signer:close() self._c:close() end
function Signer:closed() return self._c:closed() end
function Signer:__tostring() return "ibkr.oauth signer (" .. self.realm .. ")" end

return M
