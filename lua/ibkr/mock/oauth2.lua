-- ibkr.mock.oauth2: the server side of IBKR's OAuth 2.0 for the mock gateway (`--oauth2`).
-- A generated test client (an RSA key pair, a client id, a key id, a credential and the address it
-- connects from) written to a directory with the CLI's config file; the token endpoint
-- (POST /oauth2/api/v1/token: a private_key_jwt client assertion -> an access token), the SSO
-- session endpoint (POST /gw/api/v1/sso-sessions: the access token and a signed session JWT ->
-- the bearer token of the API), and a check of every other request's bearer: 401 when it is
-- missing, unknown or expired, as api.ibkr.com answers.
--
-- Every check is written from the server's side and apart from the client's code
-- (ibkr/oauth2.lua): JWTs are split, decoded and judged here (alg, kid, signature with the
-- registered public key, iss/sub/aud, exp/iat windows, replayed jti or assertion, ip against the
-- request's source address, credential). It borrows only ibkr.core's crypto primitives
-- (core.oauth: RSA verification and generation, base64url, random bytes, private files).
--
-- Control: GET /__mock/oauth2 -> the client, settings, counters, faults; POST /__mock/oauth2
-- {token_ttl, session_ttl, sso_expires_in, ip, expire, fault, faults, echo, echo_at, clear_faults,
-- reset}
-- (docs/oauth.md "The mock gateway in OAuth 2.0 mode").
local core = require("ibkr.core")
local socket = require("socket")
local json = require("ibkr.mock.json")
local response = require("ibkr.mock.response")
local faults_mod = require("ibkr.mock.faults")
local files = require("ibkr.mock.files")

local M = {}
M.__index = M

M.TOKEN_PATH = "/oauth2/api/v1/token"
M.SSO_PATH = "/gw/api/v1/sso-sessions"
M.TOKEN_TTL = 3600            -- seconds an access token lives
M.SESSION_TTL = 86400         -- seconds an SSO session (its bearer token) lives
M.KEY_BITS = 3072             -- the test client's RSA key (IBKR asks for 3072 bits or more)
M.LEEWAY = 30                 -- seconds the time claims may be off the mock's clock
M.MAX_ASSERTION_LIFE = 300    -- seconds a client assertion may live (exp - iat)
M.MAX_SESSION_JWT_LIFE = 86400 + 60
M.SCOPE = "sso-sessions.write"
M.ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
M.FILES = { key = "client.pem", public = "client_public.pem", config = "oauth2.conf" }

local o = core.oauth

local function wall() return socket.gettime() end

local function token() return o.b64url_encode(o.random(32)) end

------------------------------------------------------------------------------------------------
-- The test client and its files

local function config_text(self, urls)
  local c = self.client
  return table.concat({
    "# OAuth 2.0 test client of ibkr-mock-gateway (not a real IBKR client)",
    "base_url = " .. urls.base_url,
    "client_id = " .. c.client_id,
    "key_id = " .. c.key_id,
    "private_key_file = " .. M.FILES.key,
    "credential = " .. c.credential,
    "ip = " .. c.ip,
    "token_url = " .. urls.root .. M.TOKEN_PATH,
    "sso_url = " .. urls.root .. M.SSO_PATH,
    "",
  }, "\n")
end

-- Writes the key pair and oauth2.conf into dir, each a NEW file (0600): an existing file is
-- never overwritten (ibkr.mock.files). Returns true or nil, err.
local function write_client(self, dir, urls)
  local ok, err = files.write_new(dir, {
    { M.FILES.key, self.private_pem }, { M.FILES.public, self.public_pem },
    { M.FILES.config, config_text(self, urls) },
  })
  if not ok then return nil, err end
  self.config_file = dir .. "/" .. M.FILES.config
  self.key_file = dir .. "/" .. M.FILES.key
  return true
end

-- The address the client's `ip` claim must name: the one the mock sees it connect from.
local function client_ip(host)
  if host == "::1" or (host or ""):match("^127%.") then return host end
  return "127.0.0.1"
end

-- opts: dir (default: a new private temporary directory, removed by close), token_ttl,
-- session_ttl (seconds), key_bits, state (the brokerage state of each new SSO session), host,
-- root and base_url (the mock's, for the config file). Returns the instance or nil, err.
function M.new(opts)
  local self = setmetatable({
    token_ttl = opts.token_ttl or M.TOKEN_TTL, session_ttl = opts.session_ttl or M.SESSION_TTL,
    session_state = opts.state or "unauthenticated",
  }, M)
  self.private_pem, self.public_pem = o.rsa_generate(opts.key_bits or M.KEY_BITS)
  local hex = o.b64url_encode(o.random(6)):gsub("[^%w]", "x")
  self.client = {
    client_id = "MOCKCLIENT" .. hex:upper(), key_id = "mockkey" .. hex:sub(1, 4):lower(),
    credential = string.format("mockuser%06d", string.unpack(">I4", o.random(4)) % 1000000),
    ip = client_ip(opts.host),
  }
  local dir, owned = files.open_dir(opts.dir, "ibkr-mock-oauth2")
  if not dir then return nil, owned end
  self.dir, self.owned_dir = dir, owned and dir or nil
  local ok, err = write_client(self, dir, { root = opts.root, base_url = opts.base_url })
  if not ok then
    self:close()
    return nil, "--oauth2-dir: " .. tostring(err)
  end
  self:reset()
  return self
end

function M:reset()
  self.tokens = {}        -- access token -> wall expiry
  self.sessions = {}      -- bearer token -> wall expiry
  self.seen = {}          -- jti or signature -> wall time until which it is remembered
  self.faults = faults_mod.new()
  self.echo, self.echo_at = 0, nil
  self.expected_ip = nil  -- nil: the request's source address
  self.sso_expires_in = true
  self.counters = { token_requests = 0, tokens_issued = 0, sso_requests = 0, sessions_issued = 0,
    verified = 0, rejected = 0 }
  self.last_rejection = nil
end

function M:close()
  if self.owned_dir then files.remove(self.owned_dir) end
  self.owned_dir = nil
end

------------------------------------------------------------------------------------------------
-- Checks

local function refuse(self, status, code, description)
  self.counters.rejected = self.counters.rejected + 1
  self.last_rejection = code .. ": " .. description
  return response.json(status, { error = code, error_description = description })
end

local function unquote(s)
  return (s:gsub("%+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_form(body)
  local t = {}
  for pair in (body or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k then t[unquote(k)] = unquote(v) end
  end
  return t
end

local function json_object(b64)
  local text = o.b64url_decode(b64)
  local v = text and json.decode(text)
  if type(v) ~= "table" then return nil end
  return v
end

-- Splits and checks a compact JWS: its header (alg RS256, typ JWT when present, the registered
-- kid) and its signature with the registered public key. Returns the claims, signature; or
-- nil, why.
function M:jws(compact)
  if type(compact) ~= "string" then return nil, "no JWT" end
  local h, c, s = compact:match("^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$")
  if not h then return nil, "not a compact JWS (three base64url parts)" end
  local header = json_object(h)
  if not header then return nil, "the JWT header is not a base64url JSON object" end
  if header.alg ~= "RS256" then return nil, "alg must be RS256" end
  if header.typ ~= nil and header.typ ~= "JWT" then return nil, "typ must be JWT" end
  if header.kid ~= self.client.key_id then return nil, "unknown kid" end
  local sig = o.b64url_decode(s)
  if not sig or not o.rsa_verify(self.public_pem, h .. "." .. c, sig) then
    return nil, "the signature does not verify with the registered key"
  end
  local claims = json_object(c)
  if not claims then return nil, "the JWT claims are not a base64url JSON object" end
  return claims, s
end

-- The time claims (exp, iat within `max_life` of each other and LEEWAY of now) and replay (the
-- jti, else the signature, seen before). Returns nil, or why.
function M:fresh(claims, signature, max_life)
  local now, exp, iat = wall(), claims.exp, claims.iat
  if type(exp) ~= "number" or type(iat) ~= "number" then return "exp and iat must be numbers" end
  if now > exp + M.LEEWAY then return "the JWT has expired (exp)" end
  if iat > now + M.LEEWAY then return "the JWT is not yet valid (iat in the future)" end
  if exp <= iat then return "exp is not after iat" end
  if exp - iat > max_life then return string.format("the JWT lives too long (exp - iat > %d s)", max_life) end
  for k, t in pairs(self.seen) do
    if t < now then self.seen[k] = nil end
  end
  local id = type(claims.jti) == "string" and "jti:" .. claims.jti or "sig:" .. signature
  if self.seen[id] then return claims.jti and "jti replayed" or "JWT replayed" end
  self.seen[id] = exp + M.LEEWAY
  return nil
end

local function live(map, tok)
  return tok ~= nil and map[tok] ~= nil and map[tok] > wall()
end

local function bearer(req)
  return (req.headers.authorization or ""):match("^[Bb]earer +(%S+)$")
end

------------------------------------------------------------------------------------------------
-- The endpoints

-- A hostile server's quote of what it was sent: the Authorization header and the body.
local function quoted(req)
  return "Authorization: " .. (req.headers.authorization or "") .. "; body: " .. (req.body or "")
end

-- Whether the request (at `where`: "token", "sso", "api" or "ws") is answered with the quote of what
-- was sent (control echo = n, echo_at = where: the next n requests there; without echo_at the
-- next n to either token endpoint).
function M:echoes(where)
  if self.echo <= 0 then return false end
  if self.echo_at ~= where and not (self.echo_at == nil and (where == "token" or where == "sso")) then
    return false
  end
  self.echo = self.echo - 1
  return true
end

-- POST /oauth2/api/v1/token
function M:token_answer(req)
  local c = self.client
  if not (req.headers["content-type"] or ""):find("^application/x%-www%-form%-urlencoded") then
    return refuse(self, 400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
  end
  local f = parse_form(req.body)
  if f.grant_type ~= "client_credentials" then
    return refuse(self, 400, "unsupported_grant_type", "grant_type must be client_credentials")
  end
  if f.scope ~= M.SCOPE then return refuse(self, 400, "invalid_scope", "scope must be " .. M.SCOPE) end
  if f.client_assertion_type ~= M.ASSERTION_TYPE then
    return refuse(self, 401, "invalid_client", "client_assertion_type must be " .. M.ASSERTION_TYPE)
  end
  local claims, sig = self:jws(f.client_assertion)
  if not claims then return refuse(self, 401, "invalid_client", sig) end
  if claims.iss ~= c.client_id then return refuse(self, 401, "invalid_client", "iss is not the client_id") end
  if claims.sub ~= c.client_id then return refuse(self, 401, "invalid_client", "sub is not the client_id") end
  if claims.aud ~= "/token" then return refuse(self, 401, "invalid_client", "aud must be /token") end
  local why = self:fresh(claims, sig, M.MAX_ASSERTION_LIFE)
  if why then return refuse(self, 401, "invalid_client", why) end
  local t = token()
  self.tokens[t] = wall() + self.token_ttl
  self.counters.tokens_issued = self.counters.tokens_issued + 1
  return response.json(200, { access_token = t, token_type = "Bearer", expires_in = self.token_ttl,
    scope = M.SCOPE })
end

-- POST /gw/api/v1/sso-sessions
function M:sso_answer(req)
  local c = self.client
  if not live(self.tokens, bearer(req)) then
    return refuse(self, 401, "invalid_token", "the access token is missing, unknown or expired")
  end
  if not (req.headers["content-type"] or ""):find("^application/jwt") then
    return refuse(self, 400, "invalid_request", "Content-Type must be application/jwt")
  end
  local claims, sig = self:jws(req.body)
  if not claims then return refuse(self, 401, "invalid_client", sig) end
  if claims.iss ~= c.client_id then return refuse(self, 401, "invalid_client", "iss is not the client_id") end
  if claims.credential ~= c.credential then
    return refuse(self, 401, "invalid_grant", "credential is not the user registered for this client")
  end
  local ip = self.expected_ip or req.peer
  if claims.ip ~= ip then
    return refuse(self, 401, "invalid_grant", string.format(
      "ip %s does not match the request's source address",
      type(claims.ip) == "string" and claims.ip:sub(1, 64) or "(none)"))
  end
  local why = self:fresh(claims, sig, M.MAX_SESSION_JWT_LIFE)
  if why then return refuse(self, 401, "invalid_grant", why) end
  local t = token()
  self.sessions[t] = wall() + self.session_ttl
  self.counters.sessions_issued = self.counters.sessions_issued + 1
  self.gateway:login(self.session_state) -- a new SSO session: the brokerage session starts over
  return response.json(200, { access_token = t, active = true, token_type = "Bearer",
    expires_in = self.sso_expires_in and self.session_ttl or nil })
end

-- A token endpoint's request (counted: `counter`): faults first (the mock's fault kinds, matched by
-- path), else the answer. Logged with the gateway's requests.
function M:endpoint(req, answer, counter)
  local entry = self.gateway:record(req, nil)
  self.counters[counter] = self.counters[counter] + 1
  local resp
  if req.method ~= "POST" then
    resp = response.error(405, "Method Not Allowed", { { "Allow", "POST" } })
  elseif self:echoes(counter == "token_requests" and "token" or "sso") then -- the SSO endpoint: 401
    local at_token = counter == "token_requests"
    resp = refuse(self, at_token and 400 or 401, at_token and "invalid_request" or "invalid_token",
      "the request was: " .. quoted(req))
  else
    local f = self.faults:take(req.method, req.path)
    local function normal() return answer(self, req) end
    if f then
      entry.fault = f.kind
      resp = faults_mod.apply(f, normal, { root = self.root })
    else
      resp = normal()
    end
  end
  entry.status = resp.status
  return resp
end

-- The refusal of a websocket upgrade by a hostile gateway (echo_at = "ws"): 401 quoting the
-- request (its Authorization header and query), or nil.
function M:websocket_echo(req)
  if not self:echoes("ws") then return nil end
  return "bad upgrade: " .. quoted(req) .. "; query: " .. (req.query or "")
end

-- Any other request: a live bearer token of an SSO session. nil when it passes; a refusal is
-- logged with the gateway's requests (status 401, refused = "bearer"). A hostile gateway
-- (echo_at = "api") answers 400 quoting the request.
function M:verify(req)
  if self:echoes("api") then
    local entry = self.gateway:record(req, req.path:match("^/v1/api(/.*)$"))
    entry.status, entry.refused = 400, "echo"
    return response.json(400, { error = "bad request: " .. quoted(req), statusCode = 400 })
  end
  if live(self.sessions, bearer(req)) then
    self.counters.verified = self.counters.verified + 1
    return nil
  end
  self.counters.rejected = self.counters.rejected + 1
  self.last_rejection = "bearer token missing, unknown or expired"
  local entry = self.gateway:record(req, req.path:match("^/v1/api(/.*)$"))
  entry.status, entry.refused = 401, "bearer"
  return response.json(401,
    { error = "OAuth 2.0: bearer token missing, unknown or expired", statusCode = 401 })
end

-- The websocket's upgrade (ibkr.mock.push): its `bearer_token` query parameter must be a live SSO
-- session's bearer token (IBKR takes it there: a socket cannot be signed per message). Counted as
-- verified or rejected like any other request's bearer.
function M:websocket_bearer(tok)
  if live(self.sessions, tok) then
    self.counters.verified = self.counters.verified + 1
    return true
  end
  self.counters.rejected = self.counters.rejected + 1
  self.last_rejection = "websocket bearer_token missing, unknown or expired"
  return false
end

------------------------------------------------------------------------------------------------
-- Control

function M:describe()
  local c = {}
  for k, v in pairs(self.client) do c[k] = v end
  c.public_key, c.private_key_file, c.config_file, c.dir = self.public_pem, self.key_file, self.config_file,
    self.dir
  local n, s = 0, 0
  for _ in pairs(self.tokens) do n = n + 1 end
  for _ in pairs(self.sessions) do s = s + 1 end
  return { client = c, token_ttl = self.token_ttl, session_ttl = self.session_ttl,
    sso_expires_in = self.sso_expires_in, ip = self.expected_ip, counters = self.counters,
    last_rejection = self.last_rejection, tokens = n, sessions = s, faults = self.faults:list(),
    echo = self.echo, echo_at = self.echo_at }
end

-- A fault of the token endpoints: F.endpoint "token" (default) or "sso", and a kind of the mock's
-- faults (docs/testing.md) or one of these shorthands: "refused" (status 401, error, description),
-- "expired" (a 200 answer whose expires_in is `expires_in`, default 0), "missing" (a 200 answer
-- without `field`, default access_token).
local SHORTHAND = {
  refused = function(f)
    return { kind = "status", status = f.status or 401,
      body = json.encode({ error = f.error or "invalid_client", error_description = f.description }) }
  end,
  expired = function(f)
    return { kind = "status", status = 200, body = json.encode({ access_token = token(),
      token_type = "Bearer", expires_in = f.expires_in or 0, active = f.endpoint == "sso" or nil }) }
  end,
  missing = function(f)
    local body = { access_token = token(), token_type = "Bearer", expires_in = 3600 }
    body[f.field or "access_token"] = nil
    return { kind = "status", status = 200, body = json.encode(body) }
  end,
}
local SHORTHAND_KEYS = { endpoint = true, error = true, description = true, expires_in = true, field = true }

function M:add_fault(spec)
  if type(spec) ~= "table" then return nil, "a fault is a JSON object" end
  local endpoint = spec.endpoint or "token"
  local path = endpoint == "token" and M.TOKEN_PATH or endpoint == "sso" and M.SSO_PATH
  if not path then return nil, 'endpoint must be "token" or "sso"' end
  local short = SHORTHAND[spec.kind]
  local f = short and short(spec) or {}
  for k, v in pairs(spec) do
    if k ~= "endpoint" and not (short and (SHORTHAND_KEYS[k] or k == "kind" or k == "status")) then
      f[k] = v
    end
  end
  f.path = path
  return self.faults:add(f)
end

local function apply_settings(self, t)
  if t.reset then self:reset() end
  if t.clear_faults then self.faults:clear() end
  for _, k in ipairs({ "token_ttl", "session_ttl" }) do
    if t[k] ~= nil then
      if type(t[k]) ~= "number" or t[k] ~= t[k] or t[k] <= 0 then return nil, k .. " must be a number > 0" end
      self[k] = t[k]
    end
  end
  if t.sso_expires_in ~= nil then self.sso_expires_in = t.sso_expires_in == true end
  if t.ip ~= nil then self.expected_ip = type(t.ip) == "string" and t.ip or nil end
  if t.echo ~= nil then self.echo = math.floor(tonumber(t.echo) or 0) end
  if t.echo_at ~= nil then
    local at = t.echo_at
    if at ~= "token" and at ~= "sso" and at ~= "api" and at ~= "ws" and at ~= false then
      return nil, "echo_at must be \"token\", \"sso\", \"api\" or \"ws\""
    end
    self.echo_at = t.echo_at or nil
  end
  if t.expire == "tokens" or t.expire == true or t.expire == "all" then self.tokens = {} end
  if t.expire == "sessions" or t.expire == true or t.expire == "all" then self.sessions = {} end
  local list = t.faults or (t.fault and { t.fault }) or {}
  for _, f in ipairs(list) do
    local ok, err = self:add_fault(f)
    if not ok then return nil, "fault: " .. err end
  end
  return true
end

function M:control(req)
  if req.method == "GET" then return response.json(200, self:describe()) end
  if req.method ~= "POST" then
    return response.error(405, "Method Not Allowed", { { "Allow", "GET, POST" } })
  end
  local t = json.decode(req.body ~= "" and req.body or "{}")
  if type(t) ~= "table" then return response.error(400, "body must be a JSON object") end
  local ok, err = apply_settings(self, t)
  if not ok then return response.error(400, err) end
  return response.json(200, self:describe())
end

-- The mock's hook: a response for the requests OAuth 2.0 decides (control, the token endpoints,
-- a refused bearer), nil for requests that go on to the gateway.
function M:handle(req)
  if req.path == "/__mock/oauth2" then return self:control(req) end
  if req.path:sub(1, 8) == "/__mock/" or req.path == "/__mock" then return nil end
  if req.path == M.TOKEN_PATH then return self:endpoint(req, M.token_answer, "token_requests") end
  if req.path == M.SSO_PATH then return self:endpoint(req, M.sso_answer, "sso_requests") end
  return self:verify(req)
end

-- Attaches OAuth 2.0 mode to mock instance m (ibkr.mock.new): opts.oauth2 = { dir =, token_ttl =,
-- session_ttl =, key_bits = }. Without an explicit --state the session starts connected but
-- unauthenticated, and so does every new SSO session: ssodh/init opens the brokerage session.
function M.attach(m, opts)
  local o2 = type(opts.oauth2) == "table" and opts.oauth2 or {}
  local self, err = M.new({ dir = o2.dir, token_ttl = o2.token_ttl, session_ttl = o2.session_ttl,
    key_bits = o2.key_bits, state = opts.state, host = m.server.address, root = m.root, base_url = m.url })
  if not self then return nil, err end
  self.gateway, self.root = m.gateway, m.root
  m.oauth2 = self
  if not opts.state then
    m.gateway.initial.state = "unauthenticated"
    m.gateway:login("unauthenticated")
  end
  return self
end

return M
