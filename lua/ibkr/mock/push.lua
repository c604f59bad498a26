-- ibkr.mock.push: the gateway's websocket /v1/api/ws (the push channel) for the mock gateway.
-- Authentication by the `api` cookie or the `{"session":...}` message, the greeting (system
-- success, act, sts), heartbeats, tic, canned topic answers (ibkr.mock.topics), sts pushed on
-- state changes of the gateway's state machine (never on recovery, like IBKR), and what the
-- control API needs (drop, heartbeats, freeze, push, greet, the message log). Facts and sources:
-- reference/ibkr-gateway-facts.md section 10; the reference is docs/testing.md ("The websocket").
-- The framing is ibkr.mock.net.ws.
local socket = require("socket")
local json = require("ibkr.mock.json")
local response = require("ibkr.mock.response")
local http = require("ibkr.mock.net.http")
local ws = require("ibkr.mock.net.ws")
local topics = require("ibkr.mock.topics")
local gateway_mod = require("ibkr.mock.gateway")

local push = {}
push.__index = push

-- Where the gateway serves its websocket (older gateways: /v1/portal/ws).
push.PATHS = { ["/v1/api/ws"] = true, ["/v1/portal/ws"] = true }

push.defaults = {
  ws_heartbeat = 10,           -- seconds between {"topic":"system","hb":...}
  ws_greeting_delay = 0.25,    -- seconds from the session known to the greeting
  ws_max_message = 65536,      -- bytes of a client message (frame or joined fragments): else 1009
  ws_max_queue = 1048576,      -- bytes queued for a client that does not read: else dropped
  ws_session_timeout = 30,     -- seconds to send {"session":...} after "waiting for session"
  ws_max_clients = 256,        -- open websocket connections; more are refused with 503
  ws_push_recovery = false,    -- also push sts when the session recovers (IBKR never does)
  ws_quiet_expiry = false,     -- idle expiry: no sts, the socket goes quiet (no heartbeat, no answer)
  ws_log_limit = 1000,         -- received messages kept for GET /__mock/ws/messages
}

local CLOSE_TIMEOUT = 2   -- seconds to wait for the client's close frame after ours
local LOG_TEXT_MAX = 4096 -- characters of a message kept in the log
local CLOSED_KEPT = 20    -- ended connections listed by GET /__mock/ws
local STS_ORDER = { "authenticated", "competing", "connected" }

local wall_ms, copy = gateway_mod.wall_ms, gateway_mod.copy

local function earliest(a, b)
  if not a then
    return b
  end
  return b and math.min(a, b) or a
end

-- The session fields of a gateway state.
local function fields(state)
  local authenticated = state == "ready" or state == "competing"
  return { authenticated = authenticated, competing = state == "competing",
    connected = state ~= "disconnected" and state ~= "no_session" }
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The session an `api` cookie names: `api={"session":"<id>"}` (the gateway's form, as ibind and
-- bezant send it) or `api=<id>` (IBKR's OAuth form); nil without an api cookie, false when it
-- names none.
function push.cookie_session(header)
  for pair in ((header or "") .. ";"):gmatch("([^;]*);") do
    local name, value = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
    if name == "api" then
      if value:find("^%%7[Bb]") then
        value = unescape(value)
      end
      if value:sub(1, 1) == "{" then
        local t = json.decode(value)
        return type(t) == "table" and type(t.session) == "string" and t.session or false
      end
      value = value:match('^"(.*)"$') or value
      return value ~= "" and value or false
    end
  end
  return nil
end

-- The session a `{"session":"<id>"}` message names, or nil.
local function session_message(text)
  local t = json.decode(text)
  if type(t) == "table" and type(t.session) == "string" then
    return t.session
  end
end

-- opts: gateway (ibkr.mock.gateway), clock, config (overrides of push.defaults).
function push.new(opts)
  local self = setmetatable({ gateway = opts.gateway, clock = opts.clock }, push)
  self.initial = copy(push.defaults)
  for k, v in pairs(opts.config or {}) do
    self.initial[k] = v
  end
  self.clients, self.nclients = {}, 0
  self:reset()
  self.gateway:watch(function(old, new, why) self:on_state(old, new, why) end)
  self.gateway:mount("/ws", function(req, now) return self:handshake(req, now) end)
  return self
end

-- Back to the start: every websocket connection ended at once (no close frame), start-up
-- settings, heartbeats on, nothing frozen, empty log, counters at zero.
function push:reset()
  for _, cl in ipairs(self:list(true)) do
    cl.c:drop()
  end
  self.config = copy(self.initial)
  self.heartbeats, self.frozen = true, false
  self.log, self.seq, self.closed_list = {}, 0, {}
  self.server_ids = 0
  self.counters = {
    connections = 0, refused = 0, greeted = 0, received = 0, dropped_early = 0, heartbeats = 0,
    tics = 0, subscribes = 0, unsubscribes = 0, unknown = 0, bad = 0, sts = 0, pushed = 0, pings = 0,
    pongs = 0, protocol_errors = 0, session_timeouts = 0, closes = {},
  }
end

---------------------------------------------------------------------------------------------
-- The handshake (GET /v1/api/ws)

function push:refuse(status, message, headers)
  self.counters.refused = self.counters.refused + 1
  local r = response.error(status, message, headers)
  r.close = true
  return r
end

function push:handshake(req)
  local ok, status, message, headers = ws.check_handshake(req)
  if not ok then
    return self:refuse(status, message, headers)
  end
  local g = self.gateway
  if g.state == "no_session" then
    return self:refuse(401, "no session")
  end
  local refused = self.credential and self.credential(http.parse_query(req.query), req)
  if refused then
    return self:refuse(401, refused)
  end
  local sid = push.cookie_session(req.headers.cookie)
  if sid ~= nil and sid ~= g.session then
    return self:refuse(401, "no session")
  end
  if self.nclients >= self.config.ws_max_clients then
    return self:refuse(503, "too many websocket connections")
  end
  local cl = { id = req.conn_id, session = sid or nil, auth = sid and "cookie" or nil, received = 0,
    sent = 0, subs = {} }
  return ws.upgrade(req, self:handler(cl), { max_message = math.floor(self.config.ws_max_message),
    max_queue = math.floor(self.config.ws_max_queue), close_timeout = CLOSE_TIMEOUT })
end

-- The credential the upgrade must carry in its query besides the `api` cookie, as IBKR moves a
-- socket's credential into the query (ibkrdotnet's StreamingCredential): with OAuth 1.0a
-- (oauth, ibkr.mock.oauth) `oauth_token` = the access token; with OAuth 2.0 (oauth2,
-- ibkr.mock.oauth2) `bearer_token` = a live SSO session's bearer token. The mock's HTTP check of
-- signatures and Authorization headers leaves /ws to this.
function push:authenticate_with(oauth, oauth2)
  self.credential = nil
  if oauth then
    local token = oauth.consumer.access_token
    self.credential = function(q)
      if q.oauth_token ~= token then return "OAuth: invalid token" end
    end
  elseif oauth2 then
    self.credential = function(q, req)
      local echo = oauth2:websocket_echo(req)
      if echo then return echo end
      if not oauth2:websocket_bearer(q.bearer_token) then
        return "OAuth 2.0: bearer_token missing, unknown or expired"
      end
    end
  end
end

-- The callbacks of ibkr.mock.net.ws for one client.
function push:handler(cl)
  return {
    open = function(c) self:open(cl, c) end,
    message = function(_, kind, data) self:message(cl, kind, data) end,
    timer = function(_, now) return self:timer(cl, now) end,
    closed = function(_, code, reason, how) self:closed(cl, code, reason, how) end,
    pong = function() self.counters.pongs = self.counters.pongs + 1 end,
    protocol_error = function(_, code, reason)
      self.counters.protocol_errors = self.counters.protocol_errors + 1
      cl.error = { code = code, reason = reason }
    end,
  }
end

---------------------------------------------------------------------------------------------
-- A client's life

-- Sends a message: a table as JSON, a string as it is.
local function send(cl, value)
  if cl.c:text(type(value) == "table" and json.encode(value) or value) then
    cl.sent = cl.sent + 1
    return true
  end
  return false
end

function push:open(cl, c)
  local now = self.clock()
  cl.c, cl.opened = c, now
  self.clients[cl.id] = cl
  self.nclients = self.nclients + 1
  self.counters.connections = self.counters.connections + 1
  if cl.session then
    cl.greet_at = now + self.config.ws_greeting_delay
  else
    send(cl, { message = "waiting for session" })
    cl.session_deadline = now + self.config.ws_session_timeout
  end
  if self.frozen then
    c:freeze(true)
  end
end

-- The arguments of the greeting's sts: the whole status.
function push:status_args()
  local g = self.gateway
  local f = fields(g.state)
  local info = g:status_body().serverInfo or {}
  return { authenticated = f.authenticated, competing = f.competing, connected = f.connected,
    message = "", fail = "", serverName = info.serverName, serverVersion = info.serverVersion,
    username = g.USER_NAME }
end

function push:greet(cl, now)
  local g = self.gateway
  if g.state == "no_session" or cl.session ~= g.session then
    cl.c:close(1000, "session ended")
    return
  end
  cl.greeted, cl.greeted_at = true, now
  cl.next_hb = now + self.config.ws_heartbeat
  self.counters.greeted = self.counters.greeted + 1
  send(cl, { topic = "system", success = g.USER_NAME, isFT = false, isPaper = true })
  send(cl, { topic = "act", args = g:accounts_body() })
  send(cl, { topic = "sts", args = self:status_args() })
end

-- Heartbeats on their cadence (a changed ws_heartbeat applies from the next one).
function push:heartbeat(cl, now)
  local every = self.config.ws_heartbeat
  if cl.next_hb > now + every then
    cl.next_hb = now + every
  end
  if now >= cl.next_hb then
    send(cl, { topic = "system", hb = wall_ms() })
    self.counters.heartbeats = self.counters.heartbeats + 1
    cl.next_hb = cl.next_hb + every
    if cl.next_hb <= now then
      cl.next_hb = now + every
    end
  end
  return cl.next_hb
end

-- Runs the gateway's own transitions when due (idle expiry, a pending init): they are pushed.
function push:gateway_clock(now)
  local g = self.gateway
  local t = g:next_event()
  if t and now >= t then
    g:tick(now)
    t = g:next_event()
    if t and t <= now then
      t = now + 0.001
    end
  end
  return t
end

-- What is due for a client at now; returns when it next needs a turn.
function push:timer(cl, now)
  local nxt
  if not cl.session then
    if now >= cl.session_deadline then
      self.counters.session_timeouts = self.counters.session_timeouts + 1
      cl.c:close(1008, "no session")
      return nil
    end
    nxt = cl.session_deadline
  elseif not cl.greeted then
    if now >= cl.greet_at then
      self:greet(cl, now)
    else
      nxt = cl.greet_at
    end
  end
  if cl.greeted and self.heartbeats and not cl.quiet then
    nxt = earliest(nxt, self:heartbeat(cl, now))
  end
  nxt = earliest(nxt, self:gateway_clock(now))
  if cl.c.state ~= "open" then
    return nil
  end
  return nxt
end

function push:record(cl, kind, data)
  self.seq = self.seq + 1
  local entry = { seq = self.seq, conn = cl.id, time = socket.gettime(), opcode = kind, bytes = #data,
    text = kind == "text" and data:sub(1, LOG_TEXT_MAX) or nil }
  return gateway_mod.append(self.log, entry, self.config.ws_log_limit)
end

-- A text message before the session is known: only {"session":...} counts.
function push:session_message(cl, text, entry)
  local sid = session_message(text)
  if not sid then
    entry.dropped = true
    self.counters.dropped_early = self.counters.dropped_early + 1
    return
  end
  entry.kind = "session"
  if sid ~= self.gateway.session or self.gateway.state == "no_session" then
    cl.c:close(1008, "invalid session")
    return
  end
  cl.session, cl.auth, cl.session_deadline = sid, "message", nil
  cl.greet_at = self.clock() + self.config.ws_greeting_delay
end

local KIND_COUNTER = { tic = "tics", subscribe = "subscribes", unsubscribe = "unsubscribes",
  unknown = "unknown", bad = "bad" }

function push:topic(cl, text, entry)
  local g = self.gateway
  local r = topics.handle(text, {
    account = g:accounts_body().selectedAccount, username = g.USER_NAME, session = g.session,
    now_ms = wall_ms(), last_accessed = g.last_accessed,
    next_server_id = function()
      self.server_ids = self.server_ids + 1
      return tostring(341114 + self.server_ids)
    end,
  })
  entry.kind = r.kind
  local counter = KIND_COUNTER[r.kind]
  if counter then
    self.counters[counter] = self.counters[counter] + 1
  end
  if r.kind == "subscribe" then
    cl.subs[r.key] = true
    if not fields(g.state).authenticated then
      return -- remembered; no data without a brokerage session
    end
  elseif r.kind == "unsubscribe" then
    cl.subs[r.key] = nil
  end
  for _, answer in ipairs(r.answers) do
    send(cl, answer)
  end
end

function push:message(cl, kind, data)
  self.counters.received = self.counters.received + 1
  cl.received = cl.received + 1
  local entry = self:record(cl, kind, data)
  if kind == "binary" then
    cl.c:close(1003, "binary messages are not supported")
  elseif not cl.session then
    self:session_message(cl, data, entry)
  elseif not cl.greeted then
    entry.dropped = true -- the gateway drops what comes before its greeting, silently
    self.counters.dropped_early = self.counters.dropped_early + 1
  elseif cl.quiet then
    entry.ignored = true
  else
    self:topic(cl, data, entry)
  end
end

function push:closed(cl, code, reason, how)
  if self.clients[cl.id] == cl then
    self.clients[cl.id] = nil
    self.nclients = self.nclients - 1
  end
  local closes = self.counters.closes
  closes[how] = (closes[how] or 0) + 1
  gateway_mod.append(self.closed_list, { conn = cl.id, code = code or json.null, reason = reason or "",
    how = how, error = cl.error and cl.error.reason or nil, at = self.clock() }, CLOSED_KEPT)
end

---------------------------------------------------------------------------------------------
-- State changes of the gateway

-- The clients in connection order; only the open ones unless all.
function push:list(all)
  local list = {}
  for _, cl in pairs(self.clients) do
    if all or cl.c.state == "open" then
      list[#list + 1] = cl
    end
  end
  table.sort(list, function(a, b) return a.id < b.id end)
  return list
end

-- Calls fn(client) for every open connection (in connection order).
function push:each(fn)
  for _, cl in ipairs(self:list()) do
    if cl.c.state == "open" then
      fn(cl)
    end
  end
end

function push:push_sts(cl, key, value)
  if send(cl, { topic = "sts", args = { [key] = value } }) then
    self.counters.sts = self.counters.sts + 1
  end
end

-- A new session (login, reset) or a logout ends every connection; other changes are pushed as
-- one sts per changed field when something dropped (authenticated or connected lost, competing
-- begun), and not at all when the session only recovered (unless ws_push_recovery).
function push:on_state(old, new, why)
  if why == "schedule" then
    return self:wake_all() -- a transition later: every connection plans its turn for it
  elseif why == "init" or why == "reauth" then
    self:wake_all() -- a repair may have armed a relapse (the setting relapse): plan for it too
  end
  local a, b = fields(old), fields(new)
  if why == "login" or why == "reset" or new == "no_session" then
    self:each(function(cl)
      if cl.greeted and not cl.quiet and a.authenticated then
        self:push_sts(cl, "authenticated", false)
      end
      cl.c:close(1000, new == "no_session" and "logged out" or "session ended")
    end)
    return
  end
  local dropped = (a.authenticated and not b.authenticated) or (b.competing and not a.competing)
    or (a.connected and not b.connected)
  if not dropped and not self.config.ws_push_recovery then
    return
  end
  local quiet = why == "idle" and self.config.ws_quiet_expiry
  self:each(function(cl)
    if quiet then
      cl.quiet = true -- the socket goes quiet "with no obvious error frame"
    elseif cl.greeted and not cl.quiet then
      for _, k in ipairs(STS_ORDER) do
        if a[k] ~= b[k] then
          self:push_sts(cl, k, b[k])
        end
      end
    end
  end)
end

---------------------------------------------------------------------------------------------
-- For the control API (ibkr.mock.control)

function push:view()
  local now = self.clock()
  local conns = json.array()
  for _, cl in ipairs(self:list(true)) do
    local subs = json.array()
    for k in pairs(cl.subs) do
      subs[#subs + 1] = k
    end
    table.sort(subs)
    conns[#conns + 1] = { conn = cl.id, state = cl.c.state, session = cl.session or json.null,
      auth = cl.auth or json.null, greeted = cl.greeted or false, quiet = cl.quiet or false,
      age = now - cl.opened, received = cl.received, sent = cl.sent, queued = cl.c.queued,
      subscriptions = subs }
  end
  local closed = json.array()
  for i, e in ipairs(self.closed_list) do
    closed[i] = { conn = e.conn, code = e.code, reason = e.reason, how = e.how, error = e.error,
      ago = now - e.at }
  end
  return { clients = #conns, heartbeats = self.heartbeats, frozen = self.frozen,
    counters = self.counters, connections = conns, closed = closed }
end

-- Ends every connection (or only conn): with a close frame when code is given, else at once.
function push:drop(code, reason, conn)
  local n = 0
  self:each(function(cl)
    if not conn or cl.id == conn then
      n = n + 1
      if code then
        cl.c:close(code, reason)
      else
        cl.c:drop()
      end
    end
  end)
  return n
end

-- Has every connection take a turn now (settings or the gateway's schedule changed).
function push:wake_all()
  self:each(function(cl) cl.c.port.wake() end)
end

function push:set_heartbeats(on)
  self.heartbeats = on
  self:wake_all()
end

function push:freeze(on)
  self.frozen = on
  self:each(function(cl) cl.c:freeze(on) end)
end

-- Greets every connection that knows its session and is not greeted yet. Returns how many.
function push:greet_now()
  local n, now = 0, self.clock()
  self:each(function(cl)
    if cl.session and not cl.greeted then
      cl.greet_at = now
      cl.c.port.wake()
      n = n + 1
    end
  end)
  return n
end

-- Sends to every connection (or only conn): what = { text = s } | { raw = bytes } | { ping = s }.
-- Returns how many took it.
function push:inject(what, conn)
  local n = 0
  self:each(function(cl)
    if not conn or cl.id == conn then
      local ok
      if what.raw then
        ok = cl.c:raw(what.raw)
      elseif what.ping then
        ok = cl.c:send(ws.OP.ping, what.ping)
        self.counters.pings = self.counters.pings + (ok and 1 or 0)
      else
        ok = send(cl, what.text)
      end
      n = n + (ok and 1 or 0)
    end
  end)
  self.counters.pushed = self.counters.pushed + n
  return n
end

function push:clear_log()
  local n = #self.log
  self.log = {}
  return n
end

return push
