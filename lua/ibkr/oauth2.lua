-- ibkr.oauth2: headless sessions with IBKR's OAuth 2.0 (institutional accounts): private_key_jwt
-- client assertions (RFC 7521/7523). Config checks, the two JWTs (their header and claims here;
-- RS256 and base64url in C: core.oauth.jwt_key, src/oauth.c, which holds the key), the access
-- token, the SSO session, `Authorization: Bearer` on every call, renewals (one at a time,
-- refusals backed off) and IBKR's refusals as kind "auth" errors that never carry a secret.
-- ibkr/call.lua drives it through the signer interface: needs_token -> renew -> sign, refused.
-- The flow, the worked example, the config file and secrets hygiene: docs/oauth.md "OAuth 2.0".

local core = require("ibkr.core")
local oauth = require("ibkr.oauth")
local redact = require("ibkr.redact")

local M = {}

M.TOKEN_URL = "https://api.ibkr.com/oauth2/api/v1/token"
M.SSO_URL = "https://api.ibkr.com/gw/api/v1/sso-sessions"
M.SCOPE = "sso-sessions.write"
M.GRANT_TYPE = "client_credentials"
M.ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
M.AUDIENCE = "/token"          -- the client assertion's aud: IBKR's examples use the path, not the URL
M.IAT_BACKDATE = 10            -- seconds: the client assertion's iat = now - 10 (a server clock behind ours)
M.ASSERTION_LIFETIME = 20      -- seconds: its exp = now + 20 (it authenticates one token request)
M.SESSION_LIFETIME = 86400     -- seconds: the SSO session JWT's exp = now + 86400, iat = now
M.RENEW_MARGIN = 60            -- seconds before expiry a token is renewed (at most a tenth of its life)
M.MAX_ANSWER = 64 * 1024       -- bytes of a token or SSO answer (larger: kind "auth")
M.MAX_TOKEN = 8192             -- bytes of a token
M.MAX_LIFETIME = 366 * 86400   -- seconds: a longer expires_in counts as this
M.REMEMBERED = 8               -- secrets kept for redaction after they are dropped (Signer:secrets)
M.INIT_PATH = "/iserver/auth/ssodh/init"
M.LOGOUT_PATH = "/logout"

------------------------------------------------------------------------------------------------
-- Configuration

-- name -> kind of check (check_field)
local FIELDS = {
  client_id = "text", key_id = "text", credential = "text", ip = "ip",
  private_key = "pem", private_key_file = "string", token_url = "url", sso_url = "url",
}
M.FIELDS = FIELDS

local function is_ip(v)
  local a, b, c, d = v:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    for _, x in ipairs({ a, b, c, d }) do
      if #x > 3 or tonumber(x) > 255 then return false end
    end
    return true
  end
  local head = v:gsub("%%.*$", ""):gsub(":%d+%.%d+%.%d+%.%d+$", ":0:0") -- zone, embedded IPv4
  local colons = select(2, head:gsub(":", ""))
  return #head <= 45 and colons >= 2 and colons <= 7 and head:match("^[%x:]+$") ~= nil
    and select(2, head:gsub("::", "")) <= 1 and not head:find(":::", 1, true)
end

local function check_field(k, v)
  if type(v) ~= "string" then return "must be a string (got " .. type(v) .. ")" end
  if v == "" then return "must not be empty" end
  local want = FIELDS[k]
  if want == "text" and (#v > 1024 or v:find("%c")) then
    return "must be text of at most 1024 bytes without control characters"
  end
  if want == "ip" and not is_ip(v) then return "must be an IPv4 or IPv6 address" end
  if want == "pem" and not v:find("-----BEGIN ", 1, true) then return "must be a PEM text" end
  if want == "url" then
    local authority = v:match("^[hH][tT][tT][pP][sS]?://([^/?#]*)")
    if not authority or authority == "" then return "must be an http(s) URL with a host" end
    if authority:find("@", 1, true) then return "must not carry user:password@" end
    if v:find("[?#%s%c]") then return "must have no query, fragment, blank or control character" end
  end
  return nil
end

-- Raises (at `level` above the caller) naming the field; never shows a value.
local function check_config(cfg, level)
  if type(cfg) ~= "table" then error("ibkr.new: option 'oauth2' must be a table", level + 1) end
  for k, v in pairs(cfg) do
    if not FIELDS[k] then error("ibkr.new: oauth2: unknown field '" .. tostring(k) .. "'", level + 1) end
    local why = check_field(k, v)
    if why then error("ibkr.new: oauth2: '" .. k .. "' " .. why, level + 1) end
  end
  for _, k in ipairs({ "client_id", "key_id", "credential", "ip" }) do
    if cfg[k] == nil then error("ibkr.new: oauth2: '" .. k .. "' is required", level + 1) end
  end
  if (cfg.private_key ~= nil) == (cfg.private_key_file ~= nil) then
    error("ibkr.new: oauth2: 'private_key' or 'private_key_file' is required (one of them)", level + 1)
  end
end

-- The config file of `ibkr-session --oauth2-config FILE` (ibkr/config_file.lua's format): names are
-- the `oauth2` fields (private_key_file only: PEM text does not fit on a line) plus `base_url`.
-- read_config(path) -> oauth2_table, base_url_or_nil | nil, err; cli_apply(opts, path) sets
-- opts.oauth2 (and opts.base_url when nil) -> nil | err, for the CLI.
local CONFIG_NAMES = { base_url = "string", private_key_file = "file" }
for k, want in pairs(FIELDS) do
  if want ~= "pem" and k ~= "private_key_file" then CONFIG_NAMES[k] = "string" end
end
M.read_config, M.cli_apply = require("ibkr.config_file").loaders("oauth2", CONFIG_NAMES, "oauth2 config")

------------------------------------------------------------------------------------------------
-- JWTs (docs/oauth.md "OAuth 2.0", worked example)

-- A JSON object with its members in the given order ({ {name, value}, ... }), compact, as the
-- core encodes strings and integers: the exact bytes that are signed.
local function json_object(members)
  local parts = {}
  for i, m in ipairs(members) do parts[i] = core.encode(m[1]) .. ":" .. core.encode(m[2]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- A JWT ID: 128 bits from the CSPRNG, base64url (22 characters).
function M.jti()
  return core.oauth.b64url_encode(core.oauth.random(16))
end

local Signer = {}
Signer.__index = Signer

-- The JOSE header of both JWTs.
function Signer:header_json()
  return json_object({ { "alg", "RS256" }, { "typ", "JWT" }, { "kid", self.key_id } })
end

-- The client assertion's claims at wall time `now` (whole seconds).
function Signer:assertion_claims(now)
  return json_object({
    { "iss", self.client_id }, { "sub", self.client_id }, { "aud", M.AUDIENCE },
    { "exp", now + M.ASSERTION_LIFETIME }, { "iat", now - M.IAT_BACKDATE }, { "jti", self.jti() },
  })
end

-- The SSO session JWT's claims at wall time `now`.
function Signer:session_claims(now)
  return json_object({
    { "ip", self.ip }, { "credential", self.credential }, { "iss", self.client_id },
    { "exp", now + M.SESSION_LIFETIME }, { "iat", now }, { "jti", self.jti() },
  })
end

function Signer:client_assertion()
  return self._key:sign(self:header_json(), self:assertion_claims(math.floor(self.time())))
end

function Signer:session_jwt()
  return self._key:sign(self:header_json(), self:session_claims(math.floor(self.time())))
end

-- The body of the token request (application/x-www-form-urlencoded) with `assertion`.
function M.token_form(assertion)
  local q = oauth.quote_plus
  return "grant_type=" .. q(M.GRANT_TYPE) .. "&scope=" .. q(M.SCOPE) .. "&client_assertion_type="
    .. q(M.ASSERTION_TYPE) .. "&client_assertion=" .. q(assertion)
end

------------------------------------------------------------------------------------------------
-- The signer of a session

-- scheme://host[:port] and the path of a checked URL
local function split(url)
  local origin, path = url:match("^([^:]+://[^/]+)(.*)$")
  return origin, path ~= "" and path or "/"
end

-- The ibkr.core sessions of the token endpoints: one per origin, the session's TLS, proxy and
-- time settings, answers bounded by MAX_ANSWER. Returns the session, or nil and why.
local function endpoint_session(opts, url, cache)
  local origin = split(url)
  if cache[origin] then return cache[origin] end
  local ok, cs = pcall(core.new, {
    base_url = origin, verify = opts.verify, ca_file = opts.ca_file, proxy = opts.proxy,
    timeout = opts.timeout, connect_timeout = opts.connect_timeout, user_agent = opts.user_agent,
    max_body = M.MAX_ANSWER,
  })
  if not ok then return nil, cs end
  cache[origin] = cs
  return cs
end

local function check_transport(field, url, verify, level)
  local refusal = oauth.transport_refusal(url, verify)
  if refusal == "https" then
    error("ibkr.new: oauth2: '" .. field .. "' must be https for a non-loopback host", level + 1)
  elseif refusal == "verify" then
    error("ibkr.new: oauth2: TLS verification cannot be turned off for a non-loopback host ('"
      .. field .. "')", level + 1)
  end
end

-- cfg: the `oauth2` option; opts: the session's resolved options (base_url, verify, ca_file, proxy,
-- timeout, connect_timeout, user_agent). Raises like ibkr.new, naming the field.
function M.new(cfg, opts, level)
  level = (level or 1) + 1
  check_config(cfg, level)
  local token_url, sso_url = cfg.token_url or M.TOKEN_URL, cfg.sso_url or M.SSO_URL
  check_transport("base_url", opts.base_url, opts.verify, level)
  check_transport("token_url", token_url, opts.verify, level)
  check_transport("sso_url", sso_url, opts.verify, level)
  local ok, key = pcall(core.oauth.jwt_key,
    { private_key = cfg.private_key, private_key_file = cfg.private_key_file })
  if not ok then error("ibkr.new: " .. tostring(key), level) end
  local cache = {}
  local token_core, terr = endpoint_session(opts, token_url, cache)
  local sso_core, serr = endpoint_session(opts, sso_url, cache)
  if not (token_core and sso_core) then
    key:close()
    for _, cs in pairs(cache) do cs:close() end
    error(string.format("ibkr.new: oauth2: '%s': %s", terr and "token_url" or "sso_url",
      tostring(terr or serr)), level)
  end
  return setmetatable({
    _key = key, client_id = cfg.client_id, key_id = cfg.key_id, credential = cfg.credential, ip = cfg.ip,
    token_core = token_core, token_path = select(2, split(token_url)),
    sso_core = sso_core, sso_path = select(2, split(sso_url)),
    time = core.oauth.now, -- wall clock, seconds: the JWTs' iat and exp (specs replace it)
    jti = M.jti,
    access = nil,     -- { header = "Bearer …", usable_until = session clock or false (use once) }
    session = nil,    -- { header = "Bearer …", renew_at = session clock }
    generation = 0,   -- SSO sessions opened so far; a request signed under an older one says so
    fetching = nil,   -- deadline of the renewal in progress (ibkr/call.lua)
    init_body = nil,  -- the last ssodh/init body sent (re-sent after a new SSO session); nil after logout
    seen = {},        -- the secrets held or sent lately, newest first (Signer:secrets)
  }, Signer)
end

-- Marks a renewal in progress until `deadline`; the returned value, held in a to-be-closed
-- variable, clears the mark however the renewal ends (coroutine.close included).
function Signer:fetching_until(deadline)
  self.fetching = deadline
  return setmetatable({}, { __close = function() self.fetching = nil end })
end

function Signer:needs_token(now)
  return self.session == nil or now >= self.session.renew_at
end

-- When to renew a token of `life` seconds obtained at `now` (both on the session's clock).
local function renew_time(now, life)
  return now + life - math.min(M.RENEW_MARGIN, life / 10)
end

------------------------------------------------------------------------------------------------
-- Answers and errors

local WHAT = { token = "access token", sso = "SSO session" }
local B64TOKEN = "^[%w%-%._~%+/]+=*$" -- RFC 6750's b64token: what may follow "Bearer "

-- The token of a 2xx answer and its lifetime in seconds (nil: not said); or nil and why. `what`:
-- "token" or "sso". Never shows a token.
local function check_answer(res, what)
  if type(res) ~= "table" then return nil, "the answer is not a JSON object" end
  local tok = res.access_token
  if tok == nil then return nil, "the answer has no access_token" end
  if type(tok) ~= "string" or #tok > M.MAX_TOKEN or not tok:match(B64TOKEN) then
    return nil, "the answer's access_token is not a bearer token (RFC 6750 characters, at most 8192 bytes)"
  end
  local tt = res.token_type
  if tt ~= nil and (type(tt) ~= "string" or tt:lower() ~= "bearer") then
    return nil, "the answer's token_type is not Bearer"
  end
  if what == "sso" and res.active ~= nil and res.active ~= true then
    return nil, "the answer says the session is not active"
  end
  local life = res.expires_in
  if life == nil then return tok, nil end
  if math.type(life) == nil then return nil, "the answer's expires_in is not a number" end
  if life <= 0 or life ~= life then
    return nil, string.format("the token expired on arrival (expires_in = %.15g)", life)
  end
  return tok, math.min(life, M.MAX_LIFETIME)
end

-- Every secret this signer holds or sent lately (access and SSO session tokens, client
-- assertions, session JWTs: the last M.REMEMBERED of them), newest first, then `extra`: an
-- endpoint may echo a token the signer has dropped since (ibkr/redact.lua; ibkr/call.lua redacts
-- every error and trace event of the session with them).
function Signer:secrets(extra)
  local list = {}
  for i, v in ipairs(self.seen) do list[i] = v end
  list[#list + 1] = extra
  return list
end

function Signer:remember(secret)
  table.insert(self.seen, 1, secret)
  self.seen[M.REMEMBERED + 1] = nil
end

function Signer:auth_error(what, message, t)
  t = t or {}
  return core.error{
    kind = "auth", method = "POST", path = what == "token" and self.token_path or self.sso_path,
    message = message, status = t.status, data = t.data, cause = t.cause,
    oauth_endpoint = what, -- the OAuth 2.0 endpoint that refused (ibkr/kinds.lua: its hints)
    retry_after = t.retry_after,
  }
end

-- The words of a refusal (err, kind "http"): its OAuth `error` code and description, redacted.
function Signer:refusal_words(err, secret)
  local data = type(err.data) == "table" and err.data or nil
  local code = data and type(data.error) == "string" and data.error or nil
  local desc
  if data then
    for _, k in ipairs({ "error_description", "message", "detail", "title" }) do
      if type(data[k]) == "string" then desc = data[k] break end
    end
  end
  local secrets = self:secrets(secret)
  code = code and core.printable(redact.text(code, secrets), 100)
  desc = desc and core.printable(redact.text(desc, secrets), 300)
  local words = code and desc and (code .. ": " .. desc) or code or desc
  if not data and err.message then -- the core's words for a page or a text ("HTTP 502: <title>")
    words = core.printable(redact.text(tostring(err.message):gsub("^HTTP %d*:? *", ""), secrets), 300)
    if words == "" then words = nil end
  end
  return words, code, desc
end

-- The error of a failed exchange with the token endpoint (`what`: "token" or "sso") to which
-- `secret` (the assertion or JWT) was sent. Transport failures before an answer (connect, tls,
-- a dropped connection) and our own refusals to send (rate_limited, closed) keep their kind, as
-- for any call; everything the endpoint answered, and an answer that did not come in time, is
-- kind "auth". Nothing of the answer's body is kept but its OAuth error code and description.
function Signer:failure(what, err, secret)
  local k, name = err.kind, WHAT[what]
  if k == "connect" or k == "tls" or k == "protocol" or k == "closed" or k == "rate_limited" then
    return err
  end
  if k == "timeout" then
    return self:auth_error(what, "OAuth 2.0 " .. name .. " request: no answer in time", {
      cause = core.error{ kind = "timeout", message = err.message, method = "POST", path = err.path } })
  end
  if k == "too_large" then
    return self:auth_error(what,
      string.format("OAuth 2.0 %s answer larger than %d bytes", name, M.MAX_ANSWER))
  end
  if k == "json" then
    return self:auth_error(what, "OAuth 2.0 " .. name .. " answer is not JSON", { status = err.status })
  end
  local words, code, desc = self:refusal_words(err, secret)
  local data = (code or desc) and { error = code, error_description = desc } or nil
  return self:auth_error(what, string.format("OAuth 2.0 %s request refused: HTTP %s%s", name,
    tostring(err.status or "?"), words and (": " .. words) or ""), {
    status = err.status, data = data, retry_after = err.retry_after })
end

-- An answer that came (2xx) but cannot be used.
function Signer:unusable(what, why, status)
  return self:auth_error(what, "unusable OAuth 2.0 " .. WHAT[what] .. " answer: " .. why, { status = status })
end

------------------------------------------------------------------------------------------------
-- Renewal

-- POST token_url with a fresh client assertion -> self.access. Returns true, or nil, err.
function Signer:fetch_access(exchange, clock)
  local assertion = self:client_assertion()
  self:remember(assertion)
  local res, got = exchange("POST", self.token_path, { -- got: the meta, or the error
    via = self.token_core, body = M.token_form(assertion),
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
  })
  if not res then return nil, self:failure("token", got, assertion) end
  local tok, life = check_answer(res, "token")
  if not tok then return nil, self:unusable("token", life, got.status) end
  self:remember(tok)
  self.access = { header = "Bearer " .. tok, usable_until = life and renew_time(clock(), life) or false }
  return true
end

-- POST sso_url with a fresh session JWT and the access token -> res, nil, status, jwt | nil, err.
function Signer:post_session(exchange)
  local jwt = self:session_jwt()
  self:remember(jwt)
  local res, got = exchange("POST", self.sso_path, { -- got: the meta, or the error
    via = self.sso_core, body = jwt,
    headers = { Authorization = self.access.header, ["Content-Type"] = "application/jwt" },
  })
  if res == nil then return nil, got, nil, jwt end
  return res, nil, got.status, jwt
end

-- An access token (a kept one while usable), then a new SSO session. A kept access token that
-- the SSO endpoint refuses (401) is replaced once. Returns true, or nil, err.
function Signer:open_session(exchange, clock)
  local fresh = false
  local a = self.access
  if not (a and a.usable_until and clock() < a.usable_until) then
    local ok, err = self:fetch_access(exchange, clock)
    if not ok then return nil, err end
    fresh = true
  end
  local res, err, status, jwt = self:post_session(exchange)
  if not res and not fresh and err.kind == "http" and err.status == 401 then
    self.access = nil
    local ok, ferr = self:fetch_access(exchange, clock)
    if not ok then return nil, ferr end
    res, err, status, jwt = self:post_session(exchange)
  end
  -- a token of unknown life serves once; one the SSO endpoint refused, never again
  if self.access and (not self.access.usable_until or (err and err.status == 401)) then self.access = nil end
  if not res then return nil, self:failure("sso", err, jwt) end
  local tok, life = check_answer(res, "sso")
  if not tok then return nil, self:unusable("sso", life, status) end
  life = life or M.SESSION_LIFETIME -- no expires_in: what the session JWT asked for
  self:remember(tok)
  self.session = { header = "Bearer " .. tok, renew_at = renew_time(clock(), life) }
  self.generation = self.generation + 1
  return true
end

-- The renewal of ibkr/call.lua's signer interface: an access token when needed, a new SSO session,
-- and, when a brokerage session had been opened (ssodh/init sent, no logout since), ssodh/init
-- again with the same body: a new SSO session starts without one. Its answer is not awaited
-- beyond the exchange and not judged: the keep-alive and wait_ready confirm the state.
-- Returns true, or nil, err. Refusals again and again are backed off by the caller (ibkr/call.lua,
-- the registry's "token" refusals: ibkr/kinds.lua).
function Signer:renew(exchange, clock)
  local first = self.generation == 0
  local ok, err = self:open_session(exchange, clock)
  if not ok then return nil, err end
  if not first and self.init_body then
    exchange("POST", M.INIT_PATH,
      { body = self.init_body, headers = { Authorization = self.session.header } })
  end
  return true
end

-- Per-call options for one attempt: copts plus the bearer; copts itself is not changed. Notes
-- an ssodh/init (its body is sent again after a new SSO session) and a logout (then not).
-- Returns copts, or nil, err when there is no SSO session to sign with.
function Signer:sign(method, path, copts)
  if not self.session then -- dropped by a refusal while this caller renewed: one more round
    return nil, self:auth_error("sso", "OAuth 2.0 SSO session dropped during its renewal")
  end
  local out, headers = {}, {}
  for k, v in pairs(copts or {}) do out[k] = v end
  for k, v in pairs(out.headers or {}) do headers[k] = v end
  headers.Authorization = self.session.header
  out.headers = headers
  out.generation = self.generation
  if method == "POST" and path == M.INIT_PATH then
    self.init_body = out.body or '{"publish":true,"compete":false}'
  elseif path == M.LOGOUT_PATH then
    self.init_body = nil
  end
  return out
end

-- Whether err says the server refused the bearer (then call.lua renews and tries once more).
-- The SSO session is dropped only when `sent` went out under the session in use: a burst of
-- refusals of one session renews it once, not once each.
function Signer:refused(err, sent)
  if err.kind ~= "http" or err.status ~= 401 then return false end
  if self.session and (not sent or sent.generation == self.generation) then self.session = nil end
  return true
end

-- What authenticates the push channel (the gateway's websocket) under OAuth 2.0, or nil before
-- the first SSO session: IBKR takes the SSO session token as the upgrade request's `bearer_token`
-- query parameter (ibkrdotnet's StreamingCredential; docs/oauth.md), and the header is sent too.
-- The session's `api` cookie (the /tickle answer's session) is the push channel's own business.
function Signer:websocket_auth()
  if not self.session then return nil end
  return { query = { bearer_token = self.session.header:sub(8) },
    headers = { Authorization = self.session.header } }
end

-- Drops every token and frees the key (wiped in C) and the endpoints' connections; idempotent.
function Signer:close()
  self.access, self.session, self.held, self.init_body, self.seen = nil, nil, nil, nil, {}
  if not self._key:closed() then
    self._key:close()
    self.token_core:close()
    self.sso_core:close()
  end
end

function Signer:closed() return self._key:closed() end

function Signer:__tostring()
  local what = self:closed() and "closed" or self.session and "session" or "no session"
  return "ibkr.oauth2 signer (" .. what .. ")"
end

return M
