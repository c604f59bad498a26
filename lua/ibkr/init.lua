-- ibkr: sessions of the IBKR Client Portal Web API (gateway) for Lua 5.4.
-- Policy lives here (options, pacing, retries, health, keep-alive); one HTTP exchange, decoding and
-- error objects live in the C module ibkr.core.

local core = require("ibkr.core")
local call = require("ibkr.call")
local pacing = require("ibkr.pacing")
local state = require("ibkr.state")

local M = {
  _VERSION = core._VERSION,
  null = core.null,
  core = core,
  is_error = core.is_error,
}

local DEFAULT_URL = "https://localhost:5000/v1/api"

------------------------------------------------------------------------------------------------
-- Options

-- name -> Lua type ("integer": a number with an integral value)
local OPTION_TYPES = {
  base_url = "string", verify = "boolean", ca_file = "string", timeout = "number",
  connect_timeout = "number", user_agent = "string", headers = "table", retries = "integer",
  pacing = "boolean", max_body = "integer", cooperative = "boolean",
  clock = "function", sleep = "function",  -- injectable time (tests, hosts with their own clock)
  oauth = "table", -- [oauth] headless OAuth 1.0a, checked by ibkr/oauth.lua
}

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
  if o.retries ~= nil and o.retries < 0 then error("ibkr.new: 'retries' must be >= 0", 3) end
  return o
end

------------------------------------------------------------------------------------------------
-- The session object

local Session = {}
Session.__index = Session
M.Session = Session -- for extension (add methods) and introspection

-- The blocking and the cooperative waiter of a session (see ibkr/call.lua).
local function make_waiters(s)
  local function live() return not s._closed end
  s._blocking = {
    wait = function(secs) s._sleep(secs) end, step = false, live = live, gone = call.closed_error,
  }
  s._coop = {
    wait = function(secs) coroutine.yield(secs) end, step = true, live = live, gone = call.closed_error,
  }
end

-- The waiter of a call made by the user: cooperative only when asked for and possible.
function Session:_waiter()
  if self._cooperative and coroutine.isyieldable() then return self._coop end
  return self._blocking
end

function M.new(opts)
  local o = resolve(opts)
  local cs = core_check(2, core.new, {
    base_url = o.base_url, verify = o.verify, ca_file = o.ca_file, timeout = o.timeout,
    connect_timeout = o.connect_timeout, user_agent = o.user_agent, headers = o.headers,
    max_body = o.max_body and math.tointeger(o.max_body),
  })
  -- [oauth] the signer (ibkr/oauth.lua) raises here naming a bad field; call.lua uses it
  local signer = o.oauth and require("ibkr.oauth").new(o.oauth, o.base_url, o.verify, 2)
  local s = setmetatable({
    base_url = o.base_url,
    _core = cs,
    _clock = o.clock or core.monotonic,
    _sleep = o.sleep or core.sleep,
    _random = math.random,
    _timeout = o.timeout or 10,
    _retries = o.retries and math.tointeger(o.retries) or 2,
    _pacer = o.pacing ~= false and pacing.new() or nil,
    _cooperative = o.cooperative == true,
    _closed = false,
    _oauth = signer or nil, -- [oauth]
    _generation = 0, -- bumped by s:stop(); a keep-alive runs while it sees its own generation
    _stats = { requests = 0, failures = 0, retries = 0, rate_limited = 0, paced = 0 },
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

-- Calls a named endpoint with waiter w. `compete` only for init_brokerage.
function Session:_ep(w, name, compete)
  local ep = ENDPOINTS[name]
  local copts
  -- the body as the contract writes it, keys in this order (cjson's order follows the hash seed)
  if name == "init_brokerage" then
    copts = { body = compete and '{"publish":true,"compete":true}' or '{"publish":true,"compete":false}' }
  end
  local res, err, status = call.run(self, w, ep[1], ep[2], copts, true)
  if res == nil then return nil, err end
  return res, nil, status
end

function Session:auth_status() return self:_ep(self:_waiter(), "auth_status") end
function Session:reauthenticate() return self:_ep(self:_waiter(), "reauthenticate") end
function Session:logout() return self:_ep(self:_waiter(), "logout") end
function Session:sso_validate() return self:_ep(self:_waiter(), "sso_validate") end
Session.validate = Session.sso_validate
function Session:tickle() return self:_ep(self:_waiter(), "tickle") end

function Session:init_brokerage(opts)
  if opts ~= nil and type(opts) ~= "table" then error("init_brokerage: options must be a table", 2) end
  local compete = opts and opts.compete
  if compete ~= nil and type(compete) ~= "boolean" then
    error("init_brokerage: 'compete' must be a boolean", 2)
  end
  return self:_ep(self:_waiter(), "init_brokerage", compete)
end

local SAFE = { GET = true, HEAD = true }
local REQUEST_OPTS = { query = "table", body = true, headers = "table", retry = "boolean" }

function Session:request(method, path, opts)
  if type(method) ~= "string" or not method:match("^%a+$") then
    error("request: method must be an HTTP method name such as \"GET\"", 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then error("request: path must start with '/'", 2) end
  method = method:upper()
  local copts
  if opts ~= nil then
    if type(opts) ~= "table" then error("request: options must be a table", 2) end
    for k, v in pairs(opts) do
      local want = REQUEST_OPTS[k]
      if not want then error("request: unknown option '" .. tostring(k) .. "'", 2) end
      if want == true then
        if type(v) ~= "table" and type(v) ~= "string" then
          error("request: 'body' must be a table or a string", 2)
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
  return call.run(self, self:_waiter(), method, path, copts, allow)
end

------------------------------------------------------------------------------------------------
-- Helpers

-- State and detail from /iserver/auth/status, with waiter w.
function Session:_health(w)
  local res, err = self:_ep(w, "auth_status")
  if res == nil then return state.of_error(err), err end
  return state.of_status(res), res
end

function Session:health() return self:_health(self:_waiter()) end

function Session:is_ready() return (self:health()) == "ready" end

-- Re-initialises the brokerage session: ssodh/init, or reauthenticate where the gateway has no
-- working ssodh/init (404, 405, 410). Returns result or nil, err, then the action's name.
function Session:_repair(w, compete)
  local res, err = self:_ep(w, "init_brokerage", compete)
  if res == nil and err.kind == "http" and (err.status == 404 or err.status == 405 or err.status == 410) then
    res, err = self:_ep(w, "reauthenticate")
    return res, err, "reauthenticate"
  end
  return res, err, "init_brokerage"
end

local POLL = 1        -- seconds between status polls in wait_ready
local REINIT_EVERY = 10 -- seconds between two re-initialisations in wait_ready

function Session:wait_ready(opts)
  if opts ~= nil and type(opts) ~= "table" then error("wait_ready: options must be a table", 2) end
  opts = opts or {}
  local timeout = opts.timeout or 60
  if type(timeout) ~= "number" or timeout < 0 then error("wait_ready: 'timeout' must be a number >= 0", 2) end
  local init, compete = opts.init ~= false, opts.compete == true
  local w = self:_waiter()
  local clock = self._clock
  local deadline = clock() + timeout
  local last_init
  while true do
    local st, detail = self:_health(w)
    if st == "ready" then return detail end
    if self._closed then return nil, call.closed_error("POST", "/iserver/auth/status") end
    local now = clock()
    if init and (st == "unauthenticated" or (st == "competing" and compete))
        and (not last_init or now - last_init >= REINIT_EVERY) then
      last_init = now
      self:_repair(w, compete)
      now = clock()
    end
    if now >= deadline then
      return nil, core.error{
        kind = "timeout", state = st, method = "POST", path = "/iserver/auth/status",
        cause = core.is_error(detail) and detail or nil,
        status = core.is_error(detail) and detail.status or nil,
        message = string.format("session not ready after %g s (state: %s)", timeout, st),
      }
    end
    local pause = math.min(POLL, deadline - now)
    w.wait(pause)
    if self._closed then return nil, call.closed_error("POST", "/iserver/auth/status") end
  end
end

function Session:stats()
  local t = {}
  for k, v in pairs(self._stats) do t[k] = v end
  if not self._closed then
    local info = self._core:info()
    t.connects, t.exchanges = info.connects, info.exchanges
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
function Session:__tostring()
  return "ibkr.session (" .. self.base_url .. (self._closed and ", closed)" or ")")
end

function Session:keepalive(opts) return require("ibkr.keepalive").coroutine(self, opts) end
function Session:keepalive_loop(opts) return require("ibkr.keepalive").loop(self, opts) end

function M.run(cos, opts) return require("ibkr.run").run(cos, opts) end

return M
