-- ibkr: sessions of the IBKR Client Portal Web API (gateway) for Lua 5.4.
-- Policy lives here (options, pacing, retries, health, keep-alive); one HTTP exchange, decoding and
-- error objects live in the C module ibkr.core.

local core = require("ibkr.core")
local call = require("ibkr.call")
local pacing = require("ibkr.pacing")
local state = require("ibkr.state")
local stats = require("ibkr.stats")
local waiter = require("ibkr.waiter")

local M = {
  _VERSION = core._VERSION,
  null = core.null,
  empty_array = core.empty_array, -- encodes as [] (docs/json.md)
  array_mt = core.array_mt,       -- setmetatable(t, ibkr.array_mt): t always encodes as an array
  core = core,
  is_error = core.is_error,
}

local repair = require("ibkr.repair")

local DEFAULT_URL = "https://localhost:5000/v1/api"

-- Time defaults (docs/ibkr.md, "Time bounds"). The gateway answers 503 itself after 10 s when
-- IBKR's backend is silent (field report ibeam #38): one exchange must outlast that, or the
-- user sees our "timeout" instead of what the gateway said. The call's deadline leaves room for
-- quick retries (refused connections, short Retry-After, pacing waits) after one full exchange.
M.DEFAULT_TIMEOUT = 15   -- seconds for one exchange
M.DEADLINE_EXTRA = 5     -- default deadline = timeout + this many seconds

------------------------------------------------------------------------------------------------
-- Options

-- name -> Lua type ("integer": a number with an integral value)
local OPTION_TYPES = {
  base_url = "string", verify = "boolean", ca_file = "string", timeout = "number",
  connect_timeout = "number", user_agent = "string", headers = "table", retries = "integer",
  pacing = "boolean", max_body = "integer", cooperative = "boolean", deadline = "number",
  proxy = "string",
  clock = "function", sleep = "function",  -- injectable time (tests, hosts with their own clock)
  oauth = "table", -- [oauth] headless OAuth 1.0a, checked by ibkr/oauth.lua
}
-- numbers that must be finite and > 0 (retries: finite and >= 0)
local POSITIVE = { timeout = true, connect_timeout = true, deadline = true, max_body = true }

local function check_type(name, v, want, level)
  local ok
  if want == "integer" then
    ok = math.type(v) == "integer" or (math.type(v) == "float" and v == math.floor(v))
  else
    ok = type(v) == want
  end
  if not ok then
    error(string.format("ibkr: option '%s' must be a%s %s (got %s)", name,
      want == "integer" and "n" or "", want, type(v)), level + 1)
  end
  if type(v) == "number" then -- NaN, infinities and negatives mean nothing here
    local finite = v == v and v ~= math.huge and v ~= -math.huge
    if not finite or v < 0 or (POSITIVE[name] and v == 0) then
      error(string.format("ibkr: option '%s' must be a finite number %s (got %s)", name,
        POSITIVE[name] and "> 0" or ">= 0", tostring(v)), level + 1)
    end
  end
end

-- The rules for URLs, headers, timeouts and max_body live in the core (core.new and
-- core.check_headers check them, one copy); this re-raises their error at the caller's line.
local function core_check(level, f, ...)
  local ok, res = pcall(f, ...)
  if not ok then error("ibkr: " .. tostring(res), level + 1) end
  return res
end

-- Returns the resolved options (defaults applied); raises on a programmer error.
local function resolve(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("ibkr.new: options must be a table", 3) end
  for k, v in pairs(opts) do
    local want = OPTION_TYPES[k]
    if not want then error("ibkr.new: unknown option '" .. tostring(k) .. "'", 3) end
    check_type(k, v, want, 3)
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if o.base_url == nil then
    local env = os.getenv("IBKR_BASE_URL")
    o.base_url = (env and env ~= "") and env or DEFAULT_URL
  end
  return o
end

------------------------------------------------------------------------------------------------
-- The session object

local Session = {}
Session.__index = Session
M.Session = Session -- for extension (add methods) and introspection

-- The blocking and the cooperative waiter of a session (see ibkr/waiter.lua).
local function make_waiters(s)
  local function live() return not s._closed end
  s._blocking = waiter.new("block", live, call.closed_error, function(secs) s._sleep(secs) end)
  s._coop = waiter.new("yield", live, call.closed_error)
end

-- The waiter of a call made by the user: cooperative only when asked for and possible.
function Session:_waiter()
  if self._cooperative and coroutine.isyieldable() then return self._coop end
  return self._blocking
end

function M.new(opts)
  local o = resolve(opts)
  local timeout = o.timeout or M.DEFAULT_TIMEOUT
  local cs = core_check(2, core.new, {
    base_url = o.base_url, verify = o.verify, ca_file = o.ca_file, timeout = timeout,
    connect_timeout = o.connect_timeout, user_agent = o.user_agent, headers = o.headers,
    max_body = o.max_body and math.tointeger(o.max_body), proxy = o.proxy,
  })
  -- [oauth] the signer (ibkr/oauth.lua) raises here naming a bad field; call.lua uses it
  local signer = o.oauth and require("ibkr.oauth").new(o.oauth, o.base_url, o.verify, 2)
  local s = setmetatable({
    base_url = o.base_url,
    _shown = cs:info().base_url or "?", -- base_url without credentials, for tostring
    _core = cs,
    _clock = o.clock or core.monotonic,
    _sleep = o.sleep or core.sleep,
    _random = math.random,
    _timeout = timeout,
    _deadline = o.deadline or (timeout + M.DEADLINE_EXTRA),
    _retries = o.retries and math.tointeger(o.retries) or 2,
    -- always a pacer: pacing = false turns off the client's limits, not the gateway's Retry-After
    _pacer = pacing.new{ limits = o.pacing ~= false },
    _cooperative = o.cooperative == true,
    _closed = false,
    _oauth = signer or nil, -- [oauth]
    _generation = 0, -- bumped by s:stop(); a keep-alive runs while it sees its own generation
    _observed = nil, -- { state, detail, time }: see s:state()
    _stats = stats.new(), -- counters: ibkr/stats.lua
  }, Session)
  make_waiters(s)
  return s
end

------------------------------------------------------------------------------------------------
-- The session calls

-- name -> method, path, body builder
local ENDPOINTS = {
  auth_status = { "POST", "/iserver/auth/status" },
  reauthenticate = { "POST", "/iserver/reauthenticate" },
  logout = { "POST", "/logout" },
  sso_validate = { "GET", "/sso/validate" },
  tickle = { "POST", "/tickle" },
  init_brokerage = { "POST", "/iserver/auth/ssodh/init" },
}

-- What a session endpoint's answer says about the session's state, or nil when it says nothing
-- (a rate limit, a close, an answer that carries no status).
-- Returns state, detail (the status table or the error).
local function observed(name, res, err)
  if res ~= nil then
    return (state.of_answer(name, res)), name == "tickle" and state.tickle_status(res) or res
  end
  if err.kind == "closed" or state.says_wait(err) then return nil end
  return state.of_error(err), err
end

------------------------------------------------------------------------------------------------
-- The keep-alive's interface: the few methods through which ibkr/keepalive.lua and
-- ibkr/repair.lua use a session (never its fields). Internal but stable; not for user code.
--   s:now()                       -> seconds on the session's clock (the `clock` option)
--   s:endpoint(w, name, compete, deadline) -> res, nil, status | nil, err
--                                    calls the session endpoint `name` (the names of the session
--                                    calls: "tickle", "auth_status", ...) with waiter w; `deadline`
--                                    an optional absolute time on s:now()'s clock; records what
--                                    the answer says about the state (s:state())
--   s:observe(state, detail)      records a state for s:state()
--   s:liveness()                  -> function that is true until s:stop() or s:close()
--   s:held(now)                   -> seconds left of the gateway's Retry-After hold, or nil
--   s:note_push(connected)        the push channel opened (true) or was lost (false): s:stats()

function Session:now() return self._clock() end

function Session:endpoint(w, name, compete, deadline)
  local ep = ENDPOINTS[name]
  if not ep then error("endpoint: unknown session endpoint '" .. tostring(name) .. "'", 2) end
  local copts
  -- the body as the contract writes it, keys in this order (cjson's order follows the hash seed)
  if name == "init_brokerage" then
    copts = { body = compete and '{"publish":true,"compete":true}' or '{"publish":true,"compete":false}' }
  end
  local res, err, status = call.run(self, w, ep[1], ep[2], copts, true, deadline)
  stats.answer(self._stats, self._clock(), name, res) -- SSO expiry, repair actions
  local st, detail = observed(name, res, err)
  if st then self:observe(st, detail) end
  if res == nil then return nil, err end
  return res, nil, status
end

function Session:observe(st, detail)
  self._observed = { st, detail, self._clock() }
  stats.state(self._stats, self._observed[3], st)
end

function Session:liveness()
  local gen = self._generation -- taken now: a stop() before the first resume ends it too
  return function() return not self._closed and self._generation == gen end
end

function Session:held(now) return self._pacer:held(now or self._clock()) end

function Session:note_push(connected) stats.push(self._stats, connected) end

-- s:state() -> state, detail, age: the last state any call or keep-alive of this session
-- observed (states as s:health()), the status table or error it came from, and the seconds
-- since. No request. nil before anything was observed.
function Session:state()
  local o = self._observed
  if not o then return nil end
  local age = self._clock() - o[3]
  return o[1], o[2], age > 0 and age or 0
end

function Session:auth_status() return self:endpoint(self:_waiter(), "auth_status") end
function Session:reauthenticate() return self:endpoint(self:_waiter(), "reauthenticate") end
function Session:logout() return self:endpoint(self:_waiter(), "logout") end
function Session:sso_validate() return self:endpoint(self:_waiter(), "sso_validate") end
Session.validate = Session.sso_validate
function Session:tickle() return self:endpoint(self:_waiter(), "tickle") end

function Session:init_brokerage(opts)
  if opts ~= nil and type(opts) ~= "table" then error("init_brokerage: options must be a table", 2) end
  local compete = opts and opts.compete
  if compete ~= nil and type(compete) ~= "boolean" then
    error("init_brokerage: 'compete' must be a boolean", 2)
  end
  return self:endpoint(self:_waiter(), "init_brokerage", compete)
end

local SAFE = { GET = true, HEAD = true }
local REQUEST_OPTS = { query = "table", body = true, headers = "table", retry = "boolean" }

function Session:request(method, path, opts)
  if type(method) ~= "string" or not method:match("^%a+$") then
    error("request: method must be an HTTP method name such as \"GET\"", 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then error("request: path must start with '/'", 2) end
  core_check(2, core.check_path, path) -- sent as given or refused here (the core's rule, one copy)
  method = method:upper()
  local copts
  if opts ~= nil then
    if type(opts) ~= "table" then error("request: options must be a table", 2) end
    for k, v in pairs(opts) do
      local want = REQUEST_OPTS[k]
      if not want then error("request: unknown option '" .. tostring(k) .. "'", 2) end
      if want == true then
        if type(v) ~= "table" and type(v) ~= "string" and v ~= core.empty_array then
          error("request: 'body' must be a table, a string or ibkr.empty_array", 2)
        end
      elseif type(v) ~= want then
        error("request: '" .. k .. "' must be a " .. want, 2)
      end
    end
    if opts.headers then core_check(2, core.check_headers, opts.headers) end
    copts = { query = opts.query, body = opts.body, headers = opts.headers }
  end
  local allow = opts and opts.retry
  if allow == nil then allow = SAFE[method] == true end
  local res, err, status = call.run(self, self:_waiter(), method, path, copts, allow)
  if res == nil then
    -- any call tells when the gateway is unreachable or the session is gone
    local st = state.of_error(err)
    if st == "down" or st == "tls" or st == "no_session" then self:observe(st, err) end
  end
  return res, err, status
end

------------------------------------------------------------------------------------------------
-- Helpers

-- State and detail from /iserver/auth/status, with waiter w (by `deadline`, absolute, if given).
-- A 2xx answer that judge() refuses gives "error" (or "no_session") and an error object.
local function health(s, w, deadline)
  local res, err = s:endpoint(w, "auth_status", nil, deadline)
  if res == nil then return state.of_error(err), err end
  local st, why = state.of_answer("auth_status", res)
  if why then return st, state.refusal("POST", "/iserver/auth/status", res, why) end
  return st, res
end

function Session:health() return health(self, self:_waiter()) end

function Session:is_ready() return (self:health()) == "ready" end

local POLL = 1           -- seconds between status polls in wait_ready
local WAIT_READY_OPTS = { timeout = "number", init = "boolean", compete = "boolean" }

local function wait_ready_opts(opts)
  if opts ~= nil and type(opts) ~= "table" then error("wait_ready: options must be a table", 3) end
  opts = opts or {}
  for k, v in pairs(opts) do
    local want = WAIT_READY_OPTS[k]
    if not want then error("wait_ready: unknown option '" .. tostring(k) .. "'", 3) end
    if type(v) ~= want then error("wait_ready: '" .. k .. "' must be a " .. want, 3) end
  end
  local timeout = opts.timeout or 60
  if timeout ~= timeout or timeout < 0 or timeout == math.huge then
    error("wait_ready: 'timeout' must be a finite number >= 0", 3)
  end
  return timeout, opts.init ~= false, opts.compete == true
end

-- The error of a wait_ready that ran out of time in state st (detail: last status or error).
local function not_ready(timeout, st, detail)
  local e = core.is_error(detail) and detail or nil
  local said = e and e.message or state.said(detail)
  return core.error{
    kind = "timeout", state = st, method = "POST", path = "/iserver/auth/status", cause = e,
    status = e and e.status or nil,
    message = string.format("session not ready after %g s (state: %s%s)", timeout, st,
      said and (": " .. said) or ""),
  }
end

-- wait_ready{timeout=60, init=true, compete=false}: `timeout` is a deadline for everything it
-- does (polls, repairs, their retries and waits). Repairs as the keep-alive's (ibkr/repair.lua),
-- backing off from POLL * 5 seconds.
function Session:wait_ready(opts)
  local timeout, init, compete = wait_ready_opts(opts)
  local w = self:_waiter()
  local deadline = self._clock() + timeout
  local schedule = repair.new(5 * POLL)
  while true do
    local st, detail = health(self, w, deadline)
    if st == "ready" then return detail end
    if self._closed then return nil, call.closed_error("POST", "/iserver/auth/status") end
    if init and repair.wanted(st, compete) and schedule:due(self._clock()) and self._clock() < deadline then
      local ready, err = repair.run(self, w, { compete = compete, limit = deadline,
        alive = function() return not self._closed end })
      if self._closed then return nil, call.closed_error("POST", "/iserver/auth/status") end
      if ready then return ready end
      schedule:failed(self._clock())
      detail = err or detail
    end
    local now = self._clock()
    if now >= deadline then return nil, not_ready(timeout, st, detail) end
    w.wait(math.min(POLL, deadline - now))
    if self._closed then return nil, call.closed_error("POST", "/iserver/auth/status") end
    if self._clock() >= deadline then return nil, not_ready(timeout, st, detail) end
  end
end

function Session:stats()
  local t = stats.snapshot(self._stats, self._clock())
  if not self._closed then
    local info = self._core:info()
    t.connects, t.exchanges, t.in_flight = info.connects, info.exchanges, info.in_flight
  end
  t.closed = self._closed
  return t
end

-- Ends every keep-alive of this session at its next resume (not a close: calls still work).
function Session:stop()
  self._generation = self._generation + 1
end

function Session:close()
  if not self._closed then
    self._closed = true
    self._core:close()
    if self._oauth then self._oauth:close() end -- [oauth] wipes keys and token
  end
end

function Session:closed() return self._closed end

Session.__close = Session.close
Session.__gc = Session.close
-- Shows the URL as the core shows it: without the userinfo (credentials) of base_url.
function Session:__tostring()
  return "ibkr.session (" .. self._shown .. (self._closed and ", closed)" or ")")
end

function Session:keepalive(opts) return require("ibkr.keepalive").coroutine(self, opts) end
function Session:keepalive_loop(opts) return require("ibkr.keepalive").loop(self, opts) end

function M.run(cos, opts) return require("ibkr.run").run(cos, opts) end

return M
