-- ibkr: sessions of the IBKR Client Portal Web API (gateway) for Lua 5.4.
-- Policy lives here (options, pacing, retries, health, keep-alive); one HTTP exchange, decoding and
-- error objects live in the C module ibkr.core.

local core = require("ibkr.core")
local call = require("ibkr.call")
local check = require("ibkr.check")
local kinds = require("ibkr.kinds")
local pacing = require("ibkr.pacing")
local state = require("ibkr.state")
local trace = require("ibkr.trace")
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

-- name -> what it must be (ibkr/check.lua)
local OPTIONS = {
  base_url = "string", verify = "boolean", ca_file = "string", timeout = "number>0",
  connect_timeout = "number>0", user_agent = "string", headers = "table", retries = "integer>=0",
  pacing = "boolean", max_body = "integer>0", cooperative = "boolean", deadline = "number>0",
  proxy = "string",
  clock = "function", sleep = "function",  -- injectable time (tests, hosts with their own clock)
  trace = "function", trace_body = "boolean", -- ibkr/trace.lua
  oauth = "table", -- [oauth] headless OAuth 1.0a, checked by ibkr/oauth.lua
  oauth2 = "table", -- [oauth2] headless OAuth 2.0, checked by ibkr/oauth2.lua
}

-- The rules for URLs, headers, timeouts and max_body live in the core (core.new and
-- core.check_headers check them, one copy); this re-raises their error at the caller's line.
local function core_check(level, f, ...)
  local ok, res = pcall(f, ...)
  if not ok then check.raise("ibkr: " .. tostring(res), level + 1) end
  return res
end

-- Returns the resolved options (defaults applied); raises on a programmer error.
local function resolve(opts)
  if opts == M then check.raise("ibkr.new is a function: call it as ibkr.new{...}, not ibkr:new{...}", 3) end
  check.options(OPTIONS, opts, "ibkr.new", 3)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
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
-- (This file calls its session functions as locals: the methods of the table are wrapped with the
-- check of a call made with a dot, at the end, for callers outside.)
local function waiter_of(s)
  if s._cooperative and coroutine.isyieldable() then return s._coop end
  return s._blocking
end
Session._waiter = waiter_of

function M.new(opts)
  local o = resolve(opts)
  local timeout = o.timeout or M.DEFAULT_TIMEOUT
  local cs = core_check(2, core.new, {
    base_url = o.base_url, verify = o.verify, ca_file = o.ca_file, timeout = timeout,
    connect_timeout = o.connect_timeout, user_agent = o.user_agent, headers = o.headers,
    max_body = o.max_body and math.tointeger(o.max_body), proxy = o.proxy,
  })
  -- [oauth] the signer (ibkr/oauth.lua or ibkr/oauth2.lua) raises here naming a bad field; call.lua
  -- uses it
  if o.oauth and o.oauth2 then error("ibkr.new: options 'oauth' and 'oauth2' exclude each other", 2) end
  local signer = o.oauth and require("ibkr.oauth").new(o.oauth, o.base_url, o.verify, 2)
    or o.oauth2 and require("ibkr.oauth2").new(o.oauth2, {
      base_url = o.base_url, verify = o.verify, ca_file = o.ca_file, proxy = o.proxy, timeout = timeout,
      connect_timeout = o.connect_timeout, user_agent = o.user_agent }, 2)
  local clock = o.clock or core.monotonic
  local shown = cs:info().base_url or "?" -- base_url without credentials
  local s = setmetatable({
    base_url = o.base_url,
    _shown = shown, -- for tostring
    -- the caller (ibkr/call.lua) owns the core session, pacer, counters, signer and tracer
    _call = call.new{
      core = cs, clock = clock, timeout = timeout,
      deadline = o.deadline, extra = M.DEADLINE_EXTRA, -- no deadline: a call's timeout + extra
      retries = o.retries and math.tointeger(o.retries) or 2,
      tracer = trace.new{ fn = o.trace, env = os.getenv("IBKR_TRACE"), body = o.trace_body, base = shown },
      -- always a pacer: pacing = false turns off the client's limits, not the gateway's Retry-After
      pacer = pacing.new{ limits = o.pacing ~= false },
      oauth = signer or nil, -- [oauth]
      hint = { url = o.base_url, cacert = o.ca_file, proxy = o.proxy }, -- err.hint (ibkr/kinds.lua)
    },
    _clock = clock,
    _sleep = o.sleep or core.sleep,
    _cooperative = o.cooperative == true,
    _closed = false,
    _oauth = signer or nil, -- [oauth] the caller's signer (read by specs and bench/oauth.lua)
    _generation = 0, -- bumped by s:stop(); a keep-alive runs while it sees its own generation
    -- see s:state(): the last state observed, its detail and when (three fields, not a table: they
    -- change on every session call)
    _obs_state = nil, _obs_detail = nil, _obs_time = nil,
    _own_sleep = o.sleep ~= nil, -- a sleep of the host's (or a test's): it cannot watch a descriptor
    _streams = setmetatable({}, { __mode = "k" }), -- stream -> its hooks (s:push_register)
    _push_sid = nil, -- the latest /tickle answer's session id: the websocket's credential
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
    local st, _, status = state.of_answer(name, res)
    -- ssodh/init's own "authenticated" is no proof: only auth/status (or a tickle) says ready
    if name == "init_brokerage" and st == "ready" then return nil end
    return st, name == "tickle" and (status or state.tickle_status(res)) or res
  end
  local st = kinds.observed(err) -- nil: a "not now", a close: nothing about the state
  if st == nil then return nil end
  return st, err
end

------------------------------------------------------------------------------------------------
-- The keep-alive's interface: the few methods through which ibkr/keepalive.lua and
-- ibkr/repair.lua use a session (never its fields: the session's `_` fields are this file's,
-- and what calls share is the caller's, ibkr/call.lua). Internal but stable; not for user code.
--   s:now()                       -> seconds on the session's clock (the `clock` option)
--   s:endpoint(w, name, compete, cap [, timeout, deadline]) -> res, meta | nil, err
--                                    calls the session endpoint `name` (the names of the session
--                                    calls: "tickle", "auth_status", ...) with waiter w; `cap`
--                                    an optional absolute time on s:now()'s clock by which it
--                                    ends; `timeout`, `deadline` the call's own (seconds, nil:
--                                    the session's); records what the answer says about the
--                                    state (s:state())
--   s:observe(state, detail)      records a state for s:state()
--   s:liveness()                  -> function that is true until s:stop() or s:close()
--   s:held(now)                   -> seconds left of a hold that keeps calls back (the gateway's
--                                    Retry-After, a 429 without one, refused OAuth tokens), or nil
--   s:backoff(now)                -> seconds the session's streak of 5xx answers asks repeated
--                                    attempts (keep-alive, wait_ready) to wait still, or nil
--   s:sleep(seconds)              blocks with the session's sleep (the `sleep` option)
--   s:wait_fd(fd, events, seconds) blocks until descriptor fd is ready for events ("r", "rw") or
--                                    seconds passed, in poll(2); a session with a `sleep` of its
--                                    own (which cannot watch a descriptor) sleeps with it instead,
--                                    at most `slice` seconds (its 4th argument) at a time
--   s:hinted(err)                 -> err with err.hint (the registry's, in the Lua API's words)
--   s:note_push(connected)        the push channel opened (true) or was lost (false): s:stats()

function Session:now() return self._clock() end

local observe

local function endpoint(self, w, name, compete, cap, timeout, deadline)
  local ep = ENDPOINTS[name]
  if not ep then check.raise("endpoint: unknown session endpoint '" .. tostring(name) .. "'", 2) end
  local copts
  -- the body as the contract writes it, keys in this order (cjson's order follows the hash seed)
  if name == "init_brokerage" then
    copts = { body = compete and '{"publish":true,"compete":true}' or '{"publish":true,"compete":false}' }
  end
  local c = self._call
  local limit, xsecs
  if cap or timeout or deadline then limit, xsecs = c:bounds(timeout, deadline, cap) end
  local res, second = c:run(w, ep[1], ep[2], copts, true, limit, xsecs)
  c:answered(name, res) -- SSO expiry, repair actions (s:stats())
  if name == "tickle" and type(res) == "table" then self:push_note(res.session) end
  local st, detail = observed(name, res, second)
  if st then observe(self, st, detail) end
  return res, second
end
Session.endpoint = endpoint

function observe(self, st, detail)
  local now = self._clock()
  if st ~= self._obs_state then self._call:observed(st, now) end -- its counters count changes
  self._obs_state, self._obs_detail, self._obs_time = st, detail, now
end
Session.observe = observe

function Session:liveness()
  local gen = self._generation -- taken now: a stop() before the first resume ends it too
  return function() return not self._closed and self._generation == gen end
end

function Session:held(now) return self._call:held(now or self._clock()) end

function Session:backoff(now) return self._call:backoff(now or self._clock()) end

function Session:sleep(secs) self._sleep(secs) end

function Session:wait_fd(fd, events, secs, slice)
  if self._own_sleep or fd < 0 then
    self._sleep(slice and slice < secs and slice or secs)
  else
    core.poll({ fd }, secs, { events })
  end
end

function Session:hinted(err) return self._call:hinted(err) end

function Session:note_push(connected) self._call:pushed(connected) end

-- s:state() -> state, detail, age: the last state any call or keep-alive of this session
-- observed (states as s:health()), the status table or error it came from, and the seconds
-- since. No request. nil before anything was observed.
function Session:state()
  local st = self._obs_state
  if not st then return nil end
  local age = self._clock() - self._obs_time
  return st, self._obs_detail, age > 0 and age or 0
end

-- Every session call takes these (docs/ibkr.md, "Time bounds"): the call's own bounds, in
-- seconds, in place of the session's.
local CALL_OPTS = { timeout = "number>0", deadline = "number>0" }

-- The session endpoint `name` called by the user, with the call's options (checked: an error
-- points at the caller's line) -> res, meta | nil, err.
local function user_call(self, name, opts)
  check.options(CALL_OPTS, opts, "s:" .. name, 3)
  return endpoint(self, waiter_of(self), name, nil, nil, opts.timeout, opts.deadline)
end

-- The session calls scripts make most, s:auth_status() ... s:tickle(): each checks for a call made
-- with a dot itself, so the loop at the end leaves them unwrapped (one call less each), and a call
-- without options costs no call of user_call.
local SELF_CHECKED = {}
local function endpoint_call(name)
  local f = function(self, opts)
    if getmetatable(self) ~= Session then check.method(self, Session, name) end
    if opts == nil then return endpoint(self, waiter_of(self), name) end
    return user_call(self, name, opts)
  end
  SELF_CHECKED[f] = true
  return f
end
Session.auth_status = endpoint_call("auth_status")
Session.reauthenticate = endpoint_call("reauthenticate")
Session.logout = endpoint_call("logout")
Session.sso_validate = endpoint_call("sso_validate")
Session.validate = Session.sso_validate
Session.tickle = endpoint_call("tickle")

local INIT_OPTS = { compete = "boolean", timeout = CALL_OPTS.timeout, deadline = CALL_OPTS.deadline }

function Session:init_brokerage(opts)
  opts = check.options(INIT_OPTS, opts, "s:init_brokerage")
  return endpoint(self, waiter_of(self), "init_brokerage", opts.compete, nil, opts.timeout, opts.deadline)
end

local SAFE = { GET = true, HEAD = true }
local REQUEST_OPTS = {
  query = "table", headers = "table", retry = "boolean",
  timeout = CALL_OPTS.timeout, deadline = CALL_OPTS.deadline,
  body = function(v)
    if type(v) ~= "table" and type(v) ~= "string" and v ~= core.empty_array then
      return "a table, a string or ibkr.empty_array"
    end
  end,
}

function Session:request(method, path, opts)
  if type(method) ~= "string" or not method:match("^%a+$") then
    check.raise("request: method must be an HTTP method name such as \"GET\"", 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    check.raise("request: path must start with '/'", 2)
  end
  core_check(2, core.check_path, path) -- sent as given or refused here (the core's rule, one copy)
  method = method:upper()
  local copts
  if opts ~= nil then
    check.options(REQUEST_OPTS, opts, "s:request")
    if opts.headers then core_check(2, core.check_headers, opts.headers) end
    copts = { query = opts.query, body = opts.body, headers = opts.headers }
  end
  local allow = opts and opts.retry
  if allow == nil then allow = SAFE[method] == true end
  local c = self._call
  local limit, xsecs
  if opts and (opts.timeout or opts.deadline) then limit, xsecs = c:bounds(opts.timeout, opts.deadline) end
  local res, second = c:run(waiter_of(self), method, path, copts, allow, limit, xsecs)
  if res == nil then
    -- any call tells when the gateway is unreachable or the session is gone
    local st = state.of_error(second)
    if st == "down" or st == "tls" or st == "no_session" then observe(self, st, second) end
  end
  return res, second
end

------------------------------------------------------------------------------------------------
-- Helpers

-- State and detail from /iserver/auth/status, with waiter w (by `cap`, absolute, if given;
-- `timeout`, `deadline`: the call's own bounds, or nil).
-- A 2xx answer that judge() refuses gives "error" (or "no_session") and an error object; an
-- error that says nothing about the session (held back, the deadline spent) gives nil, err.
local function health(s, w, cap, timeout, deadline)
  local res, err = endpoint(s, w, "auth_status", nil, cap, timeout, deadline)
  if res == nil then return kinds.observed(err), err end
  local st, why = state.of_answer("auth_status", res)
  if why then return st, state.refusal("POST", "/iserver/auth/status", res, why) end
  return st, res
end

-- s:health(opts), s:is_ready(opts): one auth/status call, with the call's options.
local function health_call(self, opts, fname)
  local timeout, deadline
  if opts ~= nil then
    check.options(CALL_OPTS, opts, fname, 3)
    timeout, deadline = opts.timeout, opts.deadline
  end
  local st, detail = health(self, waiter_of(self), nil, timeout, deadline)
  return st or "error", detail
end

function Session:health(opts) return health_call(self, opts, "s:health") end

function Session:is_ready(opts) return (health_call(self, opts, "s:is_ready")) == "ready" end

local POLL = 1           -- seconds between status polls in wait_ready
local WAIT_READY_OPTS = {
  timeout = "number>=0", deadline = "number>0", init = "boolean", compete = "boolean",
}

-- -> the seconds the whole wait may take, init, compete. `timeout` (older than the per-call
-- options) and `deadline` both bound the whole wait: the smaller wins; 60 s when neither is given.
local function wait_ready_opts(opts)
  opts = check.options(WAIT_READY_OPTS, opts, "s:wait_ready", 3)
  local budget = opts.timeout or opts.deadline or 60
  if opts.deadline and opts.deadline < budget then budget = opts.deadline end
  return budget, opts.init ~= false, opts.compete == true
end

-- The error of a wait_ready that ran out of time in state st (detail: last status or error;
-- tried: the last failed repair's error, or nil).
local function not_ready(timeout, st, detail, tried)
  local e = core.is_error(detail) and detail or nil
  local said = e and e.message or state.said(detail)
  return core.error{
    kind = "timeout", state = st, method = "POST", path = "/iserver/auth/status", cause = e or tried,
    status = e and e.status or nil, action = tried and tried.action or nil,
    message = string.format("session not ready after %g s (state: %s%s)", timeout, st,
      said and (": " .. said) or ""),
  }
end

-- The seconds wait_ready waits before its next poll: POLL, or longer while the session is held
-- back or backing off from 5xx answers; never past the deadline.
local function poll_pause(s, left)
  return math.min(math.max(POLL, s:held() or 0, s:backoff() or 0), left)
end

-- wait_ready{timeout=60, init=true, compete=false}: `timeout` (or `deadline`) is a deadline for
-- everything it does (polls, repairs, their retries and waits); each exchange gets the session's
-- timeout, or what is left. Ready only when auth/status says so. Repairs
-- as the keep-alive's (ibkr/repair.lua), backing off from POLL * 5 seconds. The state it reports
-- when time runs out is the last one an answer showed (a poll that the deadline or a hold kept
-- from being sent shows none).
function Session:wait_ready(opts)
  local timeout, init, compete = wait_ready_opts(opts)
  local w = waiter_of(self)
  local deadline = self._clock() + timeout
  local schedule = repair.new(5 * POLL)
  local st, detail, tried
  while true do
    local seen, d = health(self, w, deadline)
    if seen == "ready" then return d end
    if seen or not st then st, detail = seen, d end
    if self._closed then return nil, call.closed_error("POST", "/iserver/auth/status") end
    if init and repair.wanted(st, compete) and schedule:due(self._clock()) and self._clock() < deadline then
      local ready, err = repair.run(self, w, { compete = compete, limit = deadline,
        alive = function() return not self._closed end })
      if self._closed then return nil, call.closed_error("POST", "/iserver/auth/status") end
      if ready then return ready end
      schedule:failed(self._clock())
      tried = err or tried
    end
    local now = self._clock()
    if now >= deadline then
      return nil, self._call:hinted(not_ready(timeout, st or "error", detail, tried))
    end
    w.wait(poll_pause(self, deadline - now))
    if self._closed then return nil, call.closed_error("POST", "/iserver/auth/status") end
    if self._clock() >= deadline then
      return nil, self._call:hinted(not_ready(timeout, st or "error", detail, tried))
    end
  end
end

function Session:stats()
  local t = self._call:stats()
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
    for _, hooks in pairs(self._streams) do hooks.close() end -- its push channels first
    self._call:close() -- the core session, and the signer's keys and token [oauth]
  end
end

function Session:closed() return self._closed end

Session.__close = Session.close
Session.__gc = Session.close
-- Shows the URL as the core shows it: without the userinfo (credentials) of base_url.
function Session:__tostring()
  return "ibkr.session (" .. self._shown .. (self._closed and ", closed)" or ")")
end

------------------------------------------------------------------------------------------------
-- The push channel (ibkr/stream.lua, docs/push.md) and its interface, used by ibkr/stream.lua and
-- ibkr/push.lua only (internal but stable; the keep-alive's interface above serves them too):
--   s:push_note(sid)          records the session id of a /tickle answer (a string the gateway
--                             sent: kept only when it is a plain token); s:endpoint does for tickles
--   s:push_session()          -> that id, or nil;  s:push_forget() drops it (a refused upgrade)
--   s:push_socket(sid, max)   -> a core websocket to base_url .. "/ws" authenticated with session id
--                                sid as IBKR documents, or nil, err (docs/push.md: "What goes on
--                                the wire"); max: the websocket's max_message, or nil
--   s:push_register(st, hooks) st is a stream of the session: hooks.close() when the session
--                                closes, hooks.announce(msg) for push_announce
--   s:push_announce(msg)      hands msg to every stream of the session (a keep-alive's
--                             "authenticated"), which also makes a waiting stream try at once

function Session:stream(opts)
  local st = require("ibkr.stream").new(self, opts) -- (not a tail call: errors name the caller's line)
  return st
end

function Session:push_note(sid)
  if type(sid) == "string" and #sid <= 256 and sid:match("^[%w%-%._:+/=]+$") then self._push_sid = sid end
end
function Session:push_session() return self._push_sid end
function Session:push_forget() self._push_sid = nil end
function Session:push_register(st, hooks) self._streams[st] = hooks end

function Session:push_announce(msg)
  for _, hooks in pairs(self._streams) do hooks.announce(msg) end
end

function Session:push_socket(sid, max_message)
  if self._closed then return nil, call.closed_error("GET", "/ws") end
  return self._call:websocket("/ws", sid, max_message)
end

function Session:keepalive(opts) return require("ibkr.keepalive").coroutine(self, opts) end
function Session:keepalive_loop(opts) return require("ibkr.keepalive").loop(self, opts) end

function M.run(cos, opts) return require("ibkr.run").run(cos, opts) end

-- Every method says so when it is called with a dot (s.request("GET", ...) passes "GET" as the
-- session): "call it as s:request(...)". Metamethods are left as they are, and so are the endpoint
-- calls, which check for themselves.
for name, f in pairs(Session) do
  if type(f) == "function" and name:sub(1, 2) ~= "__" and not SELF_CHECKED[f] then
    Session[name] = function(self, ...)
      if getmetatable(self) ~= Session then check.method(self, Session, name) end
      return f(self, ...)
    end
  end
end
Session.validate = Session.sso_validate -- one function, as before the wrapping

return M
