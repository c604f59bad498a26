-- The emulated Client Portal Gateway: session state machine, endpoints under /v1/api with
-- realistic bodies, pacing, fault injection and the request log. Synchronous: it turns one
-- parsed request into one response descriptor (see ibkr.mock.response); all waiting (delays,
-- slow bodies) is done by the server loop.
local socket = require("socket")
local json = require("ibkr.mock.json")
local response = require("ibkr.mock.response")
local pacing_mod = require("ibkr.mock.pacing")
local faults_mod = require("ibkr.mock.faults")
local http = require("ibkr.mock.net.http")

local gateway = {}
gateway.__index = gateway

gateway.states = {
  ready = true, unauthenticated = true, disconnected = true, competing = true, no_session = true,
}

gateway.defaults = {
  pacing = true,        -- answer 429 like the gateway
  idle_timeout = 300,   -- seconds without API request before ready/competing -> unauthenticated (0 = never)
  init_delay = 0.5,     -- seconds from a successful ssodh/init to ready
  reauth_delay = 0.5,   -- seconds from reauthenticate to ready
  sso_window = 600,     -- seconds of the SSO window reported by ssoExpires / EXPIRES
  log_limit = 10000,    -- request log entries kept (oldest dropped)
  connection_close = false, -- every API answer says Connection: close and closes (like tickle on
                            -- some gateways, Voyz/ibeam issue #152)
  -- A session that "drops again right after login" (Voyz/ibeam issues #130, #7): once a repair
  -- (ssodh/init, reauthenticate) has made it ready, it falls back to unauthenticated after
  -- `relapse` seconds, or at the `relapse_requests`-th API request after it became ready
  -- (1: auth/status never confirms it), whichever comes first. 0 = off.
  relapse = 0,
  relapse_requests = 0,
}

local MAC = "02:42:AC:11:00:02"
local SERVER_INFO = { serverName = "JifN19053", serverVersion = "Build 10.25.0m, Nov 17, 2023 11:29:27 AM" }
local USER_ID = 87654321
local USER_NAME = "mockuser1"
gateway.USER_NAME = USER_NAME
local ACCOUNT = "DU1234567"

-- The wall clock in milliseconds (IBKR's timestamps), and a shallow copy: for the mock's modules.
local function wall_ms()
  return math.floor(socket.gettime() * 1000)
end
gateway.wall_ms = wall_ms

local function copy(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = v
  end
  return c
end
gateway.copy = copy

local function random_hex(n)
  local out = {}
  for i = 1, n do
    out[i] = string.format("%x", math.random(0, 15))
  end
  return table.concat(out)
end

-- opts: state, config (table of gateway.defaults overrides), clock, root (scheme://host:port)
function gateway.new(opts)
  local self = setmetatable({}, gateway)
  self.clock = opts.clock or socket.gettime
  self.root = opts.root or ""
  local config = copy(gateway.defaults)
  for k, v in pairs(opts.config or {}) do
    config[k] = v
  end
  self.initial = { state = opts.state or "ready", config = config }
  self.pacing = pacing_mod.new()
  self.faults = faults_mod.new()
  self.watchers = {}
  self.mounted = {}
  self:reset()
  return self
end

function gateway:reset()
  self.config = copy(self.initial.config)
  self.log = {}
  self.seq = 0
  self.faults:clear()
  self.pacing:reset()
  self.penalty = nil
  self.counters = { requests = 0, rate_limited = 0, faults_applied = 0, idle_expiries = 0, relapses = 0,
    by_path = {} }
  self:login(self.initial.state, "reset")
end

-- fn(old, new, why) is called after every change of state, and after every login (a new
-- session, even in the same state). why: "login", "reset", "control", "idle", "logout", "init",
-- "reauth", "relapse"; and with old == new and why "schedule" when a transition is scheduled for
-- later. The websocket (ibkr.mock.push) pushes what changed.
function gateway:watch(fn)
  self.watchers[#self.watchers + 1] = fn
end

function gateway:change(state, why)
  local old = self.state
  self.state = state
  if old ~= state or why == "login" or why == "reset" then
    for _, fn in ipairs(self.watchers) do
      fn(old, state, why)
    end
  end
end

-- Another module's endpoint under /v1/api (the websocket's /ws): fn(req, now) -> response. It is
-- logged and takes faults and the penalty box like any endpoint, but is not paced and is no API
-- activity (it does not hold the session against the idle timeout).
function gateway:mount(api, fn)
  self.mounted[api] = fn
end

-- When the state machine changes next by itself (a pending transition, a relapse due at its
-- time, the idle expiry), on the gateway's clock; nil when nothing is due.
function gateway:next_event()
  local t = self.pending and self.pending.at
  local r = self.relapse and self.state == "ready" and self.relapse.at
  if r then
    t = t and math.min(t, r) or r
  end
  local idle = self.config.idle_timeout
  if idle and idle > 0 and (self.state == "ready" or self.state == "competing") then
    local expiry = self.last_api + idle
    t = t and math.min(t, expiry) or expiry
  end
  return t
end

-- A (browser) login: a new SSO session in the given state.
function gateway:login(state, why)
  local now = self.clock()
  self.pending = nil
  self.relapse = nil
  self.session = random_hex(32)
  self.auth_time = wall_ms()
  self.last_accessed = self.auth_time
  self.sso_start = now
  self.last_api = now
  self:change(state or "ready", why or "login")
end

function gateway:set_state(state)
  self.pending = nil
  self.relapse = nil
  self.last_api = self.clock()
  self:change(state, "control")
end

-- The gateway's penalty box: every API request answers 429 {"error":"Too many requests"} with
-- Retry-After until `seconds` after the last hit (each hit extends it unless extend = false).
-- opts: seconds (> 0), retry_after (whole seconds, default ceil(seconds)), extend (default true).
function gateway:start_penalty(opts)
  local seconds = opts.seconds
  self.penalty = {
    seconds = seconds,
    retry_after = opts.retry_after or math.ceil(seconds),
    extend = opts.extend ~= false,
    ["until"] = self.clock() + seconds,
    hits = 0,
  }
end

function gateway:stop_penalty()
  local p = self.penalty
  self.penalty = nil
  return p and p.hits or 0
end

-- The penalty box's answer to an API request at now, or nil when there is no box (any more).
function gateway:penalised(now)
  local p = self.penalty
  if not p then
    return nil
  end
  if now >= p["until"] then
    self.penalty = nil
    return nil
  end
  p.hits = p.hits + 1
  if p.extend then
    p["until"] = now + p.seconds
  end
  self.counters.rate_limited = self.counters.rate_limited + 1
  return response.error(429, "Too many requests", { { "Retry-After", tostring(p.retry_after) } })
end

-- The transitions of a repair (gateway:schedule's why): the session may relapse after them.
local REPAIRS = { init = true, reauth = true }

-- A repair made the session ready at `at`: arms the configured relapse (or none).
function gateway:repaired(at)
  local c = self.config
  self.relapse = nil
  if (c.relapse or 0) > 0 or (c.relapse_requests or 0) > 0 then
    self.relapse = { at = (c.relapse or 0) > 0 and at + c.relapse or nil,
      left = (c.relapse_requests or 0) > 0 and math.floor(c.relapse_requests) or nil, seq = self.seq }
  end
end

-- Schedules a transition to state after delay seconds (immediately when delay <= 0); why as
-- for gateway:watch ("init", "reauth": a repair's, which may relapse).
function gateway:schedule(state, delay, now, why)
  if not delay or delay <= 0 then
    self.pending = nil
    self.last_api = now
    if REPAIRS[why] then self:repaired(now) end
    self:change(state, why)
  else
    self.pending = { state = state, at = now + delay, why = why }
    for _, fn in ipairs(self.watchers) do
      fn(self.state, self.state, "schedule") -- the state changes later: watchers plan for it
    end
  end
end

-- The relapse of a repaired session (config relapse, relapse_requests): due at its time, or
-- (`request`: an API request is being answered) at the n-th API request after the one that saw
-- the session ready first.
function gateway:relapsing(now, request)
  local r = self.relapse
  if not r or self.state ~= "ready" then
    self.relapse = nil
    return
  end
  if request and r.left and self.seq > r.seq then r.left = r.left - 1 end
  if (r.at and now >= r.at) or (r.left and r.left <= 0) then
    self.relapse = nil
    self.counters.relapses = self.counters.relapses + 1
    self:change("unauthenticated", "relapse")
  end
end

-- Applies due transitions: a pending ssodh/init or reauthenticate, a relapse, then idle expiry.
function gateway:tick(now)
  local p = self.pending
  if p and now >= p.at then
    self.pending = nil
    if self.last_api < p.at then
      self.last_api = p.at
    end
    if REPAIRS[p.why] then self:repaired(p.at) end
    self:change(p.state, p.why)
  end
  self:relapsing(now)
  local idle = self.config.idle_timeout
  if idle and idle > 0 and (self.state == "ready" or self.state == "competing")
      and now - self.last_api >= idle then
    self.counters.idle_expiries = self.counters.idle_expiries + 1
    self:change("unauthenticated", "idle")
  end
end

function gateway:sso_expires_ms(now)
  local w = self.config.sso_window
  local left = w - ((now - self.sso_start) % w)
  return math.floor(left * 1000)
end

---------------------------------------------------------------------------------------------
-- Bodies

function gateway:status_body()
  local s = self.state
  if s == "disconnected" then
    return { authenticated = false, competing = false, connected = false, MAC = MAC }
  end
  local authenticated = s == "ready" or s == "competing"
  local body = {
    authenticated = authenticated,
    established = authenticated,
    competing = s == "competing",
    connected = true,
    message = "",
    MAC = MAC,
    hardware_info = "1c4558e8|" .. MAC,
    fail = "",
  }
  if authenticated then
    body.serverInfo = copy(SERVER_INFO)
  end
  return body
end

function gateway:tickle_body(now)
  return {
    session = self.session,
    ssoExpires = self:sso_expires_ms(now),
    collission = false,
    userId = USER_ID,
    hmds = { error = "no bridge" },
    iserver = { authStatus = self:status_body() },
  }
end

function gateway:validate_body(now, req)
  return {
    USER_ID = USER_ID,
    USER_NAME = USER_NAME,
    RESULT = true,
    AUTH_TIME = self.auth_time,
    SF_ENABLED = false,
    IS_FREE_TRIAL = false,
    CREDENTIAL = USER_NAME,
    IP = req.peer or "127.0.0.1",
    EXPIRES = self:sso_expires_ms(now),
    QUALIFIED_FOR_MOBILE_AUTH = json.null,
    LANDING_APP = "UNIVERSAL",
    IS_MASTER = false,
    lastAccessed = self.last_accessed,
    LOGIN_TYPE = 2,
    PAPER_USER_NAME = USER_NAME,
    features = {
      env = "PROD", wlms = true, realtime = true, bond = true, optionChains = true,
      calendar = true, newMf = true,
    },
    region = "NJ",
  }
end

function gateway:accounts_body()
  return {
    accounts = json.array({ ACCOUNT }),
    acctProps = {
      [ACCOUNT] = { hasChildAccounts = false, supportsCashQty = true, supportsFractions = true },
    },
    aliases = { [ACCOUNT] = ACCOUNT },
    allowFeatures = { showGFIS = true, allowCrypto = false, allowFXConv = true, allowTypeAhead = true },
    chartPeriods = { STK = json.array({ "*" }) },
    groups = json.array(),
    profiles = json.array(),
    selectedAccount = ACCOUNT,
    serverInfo = copy(SERVER_INFO),
    sessionId = self.session:sub(1, 8) .. "." .. self.session:sub(9, 16),
    isFT = false,
    isPaper = true,
  }
end

local function portfolio_accounts_body()
  return json.array({ {
    id = ACCOUNT, accountId = ACCOUNT, accountVan = ACCOUNT, accountTitle = "Mock Paper Account",
    displayName = ACCOUNT, accountAlias = json.null, accountStatus = 1644814800000, currency = "USD",
    type = "DEMO", tradingType = "PMRGN", businessType = "IB_PROP", faclient = false,
    clearingStatus = "O", covestor = false, noClientTrading = false, trackVirtualFXPortfolio = true,
    parent = { mmc = json.array(), accountId = "", isMParent = false, isMChild = false, isMultiplex = false },
    desc = ACCOUNT,
  } })
end

---------------------------------------------------------------------------------------------
-- Endpoints (api = path relative to /v1/api)

local function no_session()
  return response.error(401, "no session")
end

local handlers = {}

handlers["/iserver/auth/status"] = function(self)
  if self.state == "no_session" then
    return no_session()
  end
  return response.json(200, self:status_body())
end

handlers["/tickle"] = function(self, _, now)
  if self.state == "no_session" then
    return no_session()
  end
  return response.json(200, self:tickle_body(now))
end

handlers["/sso/validate"] = function(self, req, now)
  if self.state == "no_session" then
    return no_session()
  end
  return response.json(200, self:validate_body(now, req))
end

handlers["/logout"] = function(self)
  if self.state == "no_session" then
    return no_session()
  end
  self.pending = nil
  self:change("no_session", "logout")
  return response.json(200, { status = true })
end

handlers["/iserver/reauthenticate"] = function(self, _, now)
  if self.state == "no_session" then
    return no_session()
  end
  if self.state ~= "ready" then
    self:schedule("ready", self.config.reauth_delay, now, "reauth")
  end
  return response.json(200, { message = "triggered" })
end

handlers["/iserver/auth/ssodh/init"] = function(self, req, now)
  if self.state == "no_session" then
    return no_session()
  end
  local params = http.parse_query(req.query)
  local publish, compete = params.publish == "true", params.compete == "true"
  if req.body and req.body ~= "" then
    local body = json.decode(req.body)
    if type(body) ~= "table" then
      return response.error(500, "invalid request body: expected a JSON object")
    end
    publish = body.publish == true
    compete = body.compete == true
  end
  if not publish then
    return response.error(500, "publish must be true")
  end
  local s = self.state
  if s == "unauthenticated" or s == "disconnected" or (s == "competing" and compete) then
    self:schedule("ready", self.config.init_delay, now, "init")
  end
  return response.json(200, self:status_body())
end

handlers["/iserver/accounts"] = function(self)
  local s = self.state
  if s == "no_session" then
    return no_session()
  end
  if s ~= "ready" and s ~= "competing" then
    return response.json(400, { error = "Init session first", statusCode = 400 })
  end
  return response.json(200, self:accounts_body())
end

handlers["/portfolio/accounts"] = function(self)
  if self.state == "no_session" then
    return no_session()
  end
  return response.json(200, portfolio_accounts_body())
end

function gateway.describe_request(req)
  return {
    method = req.method,
    path = req.path,
    query = req.query,
    headers = req.headers,
    body = req.body or "",
    tls = req.tls and true or false,
    conn = req.conn_id,
  }
end

handlers["/__mock/echo"] = function(_, req)
  return response.json(200, gateway.describe_request(req))
end

local methods = {
  ["/iserver/auth/status"] = { "POST", "GET" },
  ["/tickle"] = { "POST", "GET" },
  ["/sso/validate"] = { "GET" },
  ["/logout"] = { "POST" },
  ["/iserver/reauthenticate"] = { "POST" },
  ["/iserver/auth/ssodh/init"] = { "POST" },
  ["/iserver/accounts"] = { "GET" },
  ["/portfolio/accounts"] = { "GET" },
}

local function allowed(api, method)
  local list = methods[api]
  if not list then
    return true
  end
  for _, m in ipairs(list) do
    if m == method or (m == "GET" and method == "HEAD") then
      return true
    end
  end
  return false, table.concat(list, ", ")
end

-- The regular answer to an API request (no faults).
function gateway:api(req, api, now)
  if self.mounted[api] then
    return self.mounted[api](req, now)
  end
  local h = handlers[api]
  if not h then
    return response.error(404, "Not Found: " .. req.path)
  end
  local ok, allow = allowed(api, req.method)
  if not ok then
    return response.error(405, "Method Not Allowed", { { "Allow", allow } })
  end
  if self.config.pacing and api ~= "/__mock/echo" then
    local admitted, wait, rule = self.pacing:admit(api, now)
    if not admitted then
      self.counters.rate_limited = self.counters.rate_limited + 1
      local r = pacing_mod.rules[rule]
      return response.error(429, string.format("Too many requests: %s allows %d per %d s",
        rule == "global" and "the gateway" or rule, r.limit, r.period),
        { { "Retry-After", tostring(math.max(1, math.ceil(wait))) } })
    end
  end
  return h(self, req, now)
end

-- Appends entry to a log of at most limit entries (the oldest go first). Returns entry.
function gateway.append(log, entry, limit)
  log[#log + 1] = entry
  if #log > limit then
    table.remove(log, 1)
  end
  return entry
end

function gateway:record(req, api)
  self.seq = self.seq + 1
  local entry = gateway.describe_request(req)
  entry.seq = self.seq
  entry.api = api
  entry.time = socket.gettime()
  return gateway.append(self.log, entry, self.config.log_limit)
end

local LOGIN_PAGE = "<!DOCTYPE html><html><head><title>Client Portal Gateway</title></head><body>"
  .. "<h1>ibkr-mock-gateway</h1><p>Mock of the IBKR Client Portal Gateway. API under /v1/api, "
  .. "control under /__mock/.</p></body></html>"

-- Entry point for every non-control request.
function gateway:handle(req)
  local api = req.path:match("^/v1/api(/.*)$") or req.path:match("^/v1/portal(/.*)$")
  local entry = self:record(req, api)
  self.counters.requests = self.counters.requests + 1
  local resp
  if not api then
    if req.path == "/" and (req.method == "GET" or req.method == "HEAD") then
      resp = response.raw(200, "text/html; charset=utf-8", LOGIN_PAGE)
    else
      resp = response.error(404, "Not Found: " .. req.path)
    end
  else
    local now = self.clock()
    self:tick(now)
    if not self.mounted[api] then -- (the websocket's upgrade is no API activity)
      self:relapsing(now, true)
      self.last_api = now
      self.last_accessed = wall_ms()
    end
    local bp = self.counters.by_path
    bp[api] = (bp[api] or 0) + 1
    local fault
    resp = self:penalised(now)
    if not resp then
      fault = self.faults:take(req.method, api)
    end
    local function normal()
      return self:api(req, api, now)
    end
    if resp then
      entry.penalty = true
    elseif fault then
      self.counters.faults_applied = self.counters.faults_applied + 1
      entry.fault = fault.kind
      resp = faults_mod.apply(fault, normal, { root = self.root })
    else
      resp = normal()
    end
  end
  if self.config.connection_close then
    resp.close = true
  end
  entry.status = resp.status
  return resp
end

return gateway
