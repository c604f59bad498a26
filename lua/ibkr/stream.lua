-- The push channel: a session's websocket (the gateway's /v1/api/ws), kept open by a coroutine
-- that never blocks and never raises on network or gateway input (docs/push.md).
--
-- Policy only: the connection, the upgrade and the frames are ibkr.core's (s:websocket in C,
-- reached through the session's push interface in ibkr/init.lua); messages arrive decoded.
-- One channel per stream:
--   connect (a session id from the latest /tickle, or a tickle of its own), upgrade, wait for the
--   gateway's greeting ({"topic":"system","success":...}) -- nothing is written before it but
--   the {"session":...} the gateway asks for -- then send the topics and what st:send queued,
--   "tic" every tic_interval, and hand every message to on_message;
--   lost (closed, refused, an error, or silent for heartbeat_timeout): say so once
--   ({topic="ibkr", event="lost"}), back off with jitter, reconnect, say {event="reconnected"}.
--   A session that is not authenticated (no_session, unauthenticated, disconnected) is not
--   hammered: the stream looks at s:state() every REPAIR_LOOK seconds (no I/O) and reconnects
--   once a keep-alive (or anything) saw it ready, or when its backoff ends.
-- Time is the session's clock (its `clock` option), as for the keep-alive.

local core = require("ibkr.core")
local check = require("ibkr.check")
local kinds = require("ibkr.kinds")
local state = require("ibkr.state")
local waiter = require("ibkr.waiter")
local callback = require("ibkr.callback")

local M = {}

-- Reconnects back off as the registry's refusal class "push" says (kinds.REFUSALS: 1 s doubling
-- to 60 s, plus up to 10 % at random).
M.REPAIR_LOOK = 1      -- seconds between looks at s:state() while the session is not authenticated
M.SLICE = 0.0005       -- seconds of one resume (its step, then on_message calls) before it yields
                       -- (then to be resumed at once)
M.LARGE = 16384        -- bytes: a message larger than this is decoded alone in a resume
M.MAX_QUEUE = 1000     -- messages st:send keeps before the greeting
M.TIC = "tic"

-- session states in which connecting is pointless until a repair (a keep-alive's) succeeds
local WAIT_FOR_REPAIR = { no_session = true, unauthenticated = true, disconnected = true }

-- topics: an array of non-empty strings
local function topic_list(v)
  if type(v) ~= "table" then return "an array of topic strings" end
  for i, t in ipairs(v) do
    if type(t) ~= "string" or t == "" then
      return "an array of non-empty strings (topics[" .. i .. "] is not)"
    end
  end
end

local OPTS = {
  topics = topic_list, on_message = "function", on_error = "function", heartbeat_timeout = "number>0",
  tic_interval = function(v)
    if type(v) ~= "number" or not (v > 0 and v < 60) then
      return "a number > 0 and < 60 (IBKR wants a tic every minute)"
    end
  end,
  max_message = function(v)
    if math.type(v) ~= "integer" or v < 1 or v > 2 ^ 31 then return "an integer from 1 to 2^31" end
  end,
}

-- Checks a stream's options (s:stream's, or keepalive{ push = {...} }'s: fname names which);
-- raises at the caller's line (ibkr/check.lua). Returns nil (a check.options validator).
function M.check(opts, fname)
  check.options(OPTS, opts, fname or "s:stream")
end

-- The options resolved (defaults applied), and a copy of the topics.
local function resolve(opts)
  opts = opts or {}
  local topics = {}
  for i, t in ipairs(opts.topics or {}) do topics[i] = t end
  return {
    on_message = opts.on_message, on_error = opts.on_error,
    heartbeat_timeout = opts.heartbeat_timeout or 30, tic_interval = opts.tic_interval or 50,
    max_message = opts.max_message,
  }, topics
end

-- An error object of this file (method/path say where: the channel).
local function channel_error(kind, message)
  return core.error{ kind = kind, method = "GET", path = "/ws", message = message }
end

-- The unsubscribe message IBKR expects for a subscription topic: "smd+265598+{...}" ->
-- "umd+265598+{}", "sor+{}" -> "uor+{}"; any other topic: nil (pass the message yourself).
function M.unsubscribe_message(topic)
  local base = topic:match("^s(.-)%+{.*}$") or topic:match("^s(.+)$")
  return base and ("u" .. base .. "+{}") or nil
end

local Stream = {}
Stream.__index = Stream

-- Calls a user callback; what it raises goes to on_error (ibkr/callback.lua), never further.
function Stream:_callback(name, ...)
  local f = self._o[name]
  if f then callback.call(f, name, self._o.on_error, ...) end
end

function Stream:_deliver(msg)
  self._delivered = self._delivered + 1
  self:_callback("on_message", msg)
end

-- An event of the channel itself: on_message{ topic = "ibkr", event = ..., ... }.
function Stream:_event(event, fields)
  local msg = { topic = "ibkr", event = event }
  for k, v in pairs(fields or {}) do msg[k] = v end
  self:_deliver(msg)
end

function Stream:_set(st, detail)
  if st ~= self._state or detail ~= self._detail then
    if st ~= self._state then self._since = self._s:now() end
    self._state, self._detail = st, detail
  end
end

function Stream:_alive()
  return not self._closed and not self._s:closed()
end

------------------------------------------------------------------------------------------------
-- The public methods

-- st:state() -> "connecting" | "open" | "closed", detail, age (seconds). No I/O.
-- detail: "open": the greeting; "connecting": why the channel is not open (an error object),
-- or nil while the first connect is under way; "closed": why it ended, or nil after st:close().
function Stream:state()
  local age = self._s:now() - self._since
  return self._state, self._detail, age > 0 and age or 0
end

function Stream:coroutine() return self._co end

-- Sends `text` once the gateway has greeted (queued until then, in order). Returns true, or
-- nil, err: kind "closed" after close, "too_large" when MAX_QUEUE messages wait already.
function Stream:send(text)
  if type(text) ~= "string" then error("stream: send expects a string", 2) end
  if not self:_alive() then return nil, channel_error("closed", "the stream is closed") end
  if self._state == "open" and self._ws then
    local ok, err = self._ws:send(text)
    if ok then return true end
    return nil, self._s:hinted(err)
  end
  if #self._queue >= M.MAX_QUEUE then
    return nil, channel_error("too_large", "the stream's send queue is full (" .. M.MAX_QUEUE
      .. " messages wait for the gateway's greeting)")
  end
  self._queue[#self._queue + 1] = text
  return true
end

-- Adds a subscription: sent now when open, and again after every reconnect. Returns st:send's.
function Stream:subscribe(topic)
  if type(topic) ~= "string" or topic == "" then error("stream: subscribe expects a topic string", 2) end
  local known = false
  for _, t in ipairs(self._topics) do known = known or t == topic end
  if not known then self._topics[#self._topics + 1] = topic end
  if not self:_alive() then return nil, channel_error("closed", "the stream is closed") end
  if self._state == "open" then return self:send(topic) end
  return true
end

-- Drops a subscription (not re-sent after a reconnect) and, when open, sends `message` or the
-- unsubscribe message IBKR expects for it (M.unsubscribe_message). Returns true or nil, err.
function Stream:unsubscribe(topic, message)
  if type(topic) ~= "string" then error("stream: unsubscribe expects a topic string", 2) end
  if message ~= nil and type(message) ~= "string" then error("stream: the message must be a string", 2) end
  for i = #self._topics, 1, -1 do
    if self._topics[i] == topic then table.remove(self._topics, i) end
  end
  message = message or M.unsubscribe_message(topic)
  if message and self._state == "open" then return self:send(message) end
  return true
end

-- Ends the stream: a close frame if open, everything freed; its coroutine returns at its next
-- resume. Idempotent.
function Stream:close()
  if self._closed then return end
  self._closed = true
  if self._ws then
    self._ws:close(1000)
    self._ws = nil
  end
  self._queue = {}
  self:_set("closed", nil)
end
Stream.__close = Stream.close

-- The pollable a resume yields (cqueues' convention): the connection's descriptor, what to wait
-- for, and the seconds until the stream's next timer.
function Stream:pollfd() return self._ws and self._ws:pollfd() or -1 end
function Stream:events() return self._ws and self._ws:events() or "r" end
function Stream:timeout()
  local t = self._wake - self._s:now()
  return t > 0 and t or 0
end

function Stream:__tostring()
  return "ibkr.stream (" .. self._state .. ")"
end

-- A session event (the keep-alive's "authenticated": s:push_announce) for this stream:
-- on_message gets it, and a stream waiting for the session's repair tries again at once.
local function announce(st, msg)
  if not st:_alive() then return end
  st._kick = true
  st:_deliver(msg)
end

------------------------------------------------------------------------------------------------
-- The coroutine

-- Waits `secs` on the session's clock (yields), cut short by a kick or the end of the stream;
-- `look` (optional) returns true when waiting should end early (looked at every `slice`).
local function pause(st, secs, slice, look)
  local stop = st._s:now() + secs
  while st:_alive() and not st._kick do
    local left = stop - st._s:now()
    if left <= 0 or (look and look()) then return end
    local t = slice and slice < left and slice or left
    st._wake = st._s:now() + t
    coroutine.yield(t)
  end
end

-- A session id to authenticate with: the latest tickle's while the session looks fine, else from
-- a tickle of our own (which also tells whether the session is back: a probe at most once per
-- backoff step). Returns the id, or nil, err, wait (wait: the session is not authenticated; a
-- repair must come first).
local function session_id(st, w)
  local s = st._s
  local sid = s:push_session()
  if sid and not WAIT_FOR_REPAIR[s:state()] then return sid end
  local res, err = s:endpoint(w, "tickle")
  if not st:_alive() then return nil end
  if res == nil then return nil, err, WAIT_FOR_REPAIR[state.of_error(err)] == true end
  local now_state = s:state()
  if WAIT_FOR_REPAIR[now_state] then
    return nil, core.error{ kind = "not_ready", method = "GET", path = "/ws", state = now_state,
      message = "the session is " .. now_state .. ": the channel waits for a repair" }, true
  end
  sid = s:push_session()
  if not sid then return nil, channel_error("protocol", "the /tickle answer carries no usable session id") end
  return sid
end

-- The gateway's sts messages: the greeting's is whole, later ones carry the fields that changed
-- ({"authenticated":false}, then {"competing":false}...); they are applied in turn to what this
-- connection was told since the session was last seen ready (a recovery is never pushed: once
-- REST saw the session ready again, what was pushed before is history). A drop of authentication
-- (or a competing login, a lost backend connection) worse than the session's state becomes its
-- state at once; a recovery is not believed until REST says so (IBKR pushes the drop, never the
-- recovery: facts §10).
local STS = { "connected", "authenticated", "competing", "established", "message", "fail" }
local function on_sts(st, msg)
  local args = msg.args
  if type(args) ~= "table" then return end
  local told = (st._s:state() ~= "ready" and st._told) or { connected = true, authenticated = true,
    competing = false }
  for _, k in ipairs(STS) do if args[k] ~= nil then told[k] = args[k] end end
  st._told = told
  local new = state.of_status(told)
  if new == "error" then return end
  if state.worse(new, (st._s:state())) then st._s:observe(new, args) end
  if st._hooks.pushed then st._hooks.pushed(new, args) end -- the keep-alive's (ibkr/push.lua)
end

-- The gateway greeted: the channel is open. Topics first, then what st:send queued, in order.
local function greeted(st, ws, msg, outage)
  local now = st._s:now()
  st:_set("open", msg)
  st._next_tic = now + st._o.tic_interval
  for _, t in ipairs(st._topics) do ws:send(t) end
  local q = st._queue
  st._queue = {}
  for _, text in ipairs(q) do ws:send(text) end
  if outage then
    st:_event("reconnected", { down = now - outage.since, attempts = outage.attempts })
  end
end

-- One message from the gateway: the greeting and "waiting for session" are acted on, sts is
-- noted; every message goes to on_message (not once the stream was closed: by on_message
-- itself, in the "reconnected" a greeting brings).
local function handle(st, ws, msg, ctx)
  if st._state ~= "open" then
    if msg.topic == "system" and msg.success ~= nil then
      greeted(st, ws, msg, ctx.outage)
      ctx.outage = nil
    elseif msg.message == "waiting for session" and ctx.sid then
      ws:send(core.encode{ session = ctx.sid })
    end
  end
  if not st:_alive() then return end
  if msg.topic == "sts" then on_sts(st, msg) end
  st:_deliver(msg)
end

-- Hands over what was received, oldest first, until SLICE seconds after t0 (the resume's
-- start). A message larger than LARGE is decoded only first thing in a resume (`fresh`: nothing
-- was done yet in this one), so that its decode is all a resume does: one resume stays within
-- its bound for messages up to 64 KiB. Returns true when messages are left (resume at once).
local function drain(st, ws, ctx, t0, fresh)
  while st:_alive() do
    local n = ws:pending()
    if n == nil then return false end
    if n > M.LARGE and not fresh then return true end
    handle(st, ws, ws:read(), ctx)
    fresh = false
    if core.monotonic() - t0 > M.SLICE then return true end
  end
  return false
end

-- The error of a channel silent for heartbeat_timeout seconds.
local function silence(st, o)
  return core.error{ kind = "timeout", method = "GET", path = "/ws", silent = o.heartbeat_timeout,
    message = string.format("nothing from the gateway for %g s%s", o.heartbeat_timeout,
      st._state == "open" and "" or " (no greeting)") }
end

-- The error of a channel that heard something after the upgrade, but not the greeting, within
-- heartbeat_timeout seconds of it (heartbeats, "waiting for session"...: none of it counts).
local function no_greeting(o)
  return core.error{ kind = "timeout", method = "GET", path = "/ws", greeting = o.heartbeat_timeout,
    message = string.format("no greeting within %g s of the upgrade (the gateway sent other messages)",
      o.heartbeat_timeout) }
end

-- Why the connection is lost at `now`, or nil: silence for heartbeat_timeout, or no greeting
-- within heartbeat_timeout of the upgrade (`upgraded`: when; any byte resets only the silence).
-- Also the time it would be lost at, if nothing arrives.
local function deadline(st, o, now, heard, upgraded)
  if not upgraded then return nil, math.huge end
  if now - heard >= o.heartbeat_timeout then return silence(st, o) end
  if st._state ~= "open" then
    if now - upgraded >= o.heartbeat_timeout then return no_greeting(o) end
    return nil, upgraded + o.heartbeat_timeout -- (heard is never earlier)
  end
  return nil, heard + o.heartbeat_timeout
end

-- One connection, from connect to loss. Returns the error that lost it, or nil when the stream
-- (or the session) was closed.
local function hold(st, ws, ctx)
  local s, o = st._s, st._o
  local heard, rx, upgraded = s:now(), 0, nil -- upgraded: when the upgrade was answered
  st._told = nil -- what this connection's sts messages said
  while st:_alive() do
    local t0, more = core.monotonic(), true
    if (ws:pending() or 0) > M.LARGE then
      drain(st, ws, ctx, t0, true) -- a large message waits: decoded alone in this resume
    else
      more = ws:step()
      if drain(st, ws, ctx, t0, false) then more = true end
    end
    if not st:_alive() then return nil end
    local now, got = s:now(), ws:received()
    if got ~= rx then rx, heard = got, now end
    local wst, err = ws:state()
    if not upgraded and wst ~= "connecting" then upgraded, heard = now, now end
    if wst == "closed" and not ws:pending() then
      return err or channel_error("closed", "the websocket closed")
    end
    local late, due = deadline(st, o, now, heard, upgraded)
    if late then return late end
    if st._state == "open" then
      if now >= st._next_tic then
        ws:send(M.TIC)
        st._next_tic = now + o.tic_interval
      end
      if st._next_tic < due then due = st._next_tic end
    end
    local t = ws:timeout()
    if t and now + t < due then due = now + t end
    if more then due = now end
    st._wake = due
    coroutine.yield(due - now, st)
  end
  return nil
end

-- After a loss (or a failed attempt): say so once per outage, then back off (kinds.backoff,
-- class "push"); a session that waits for a repair is looked at every REPAIR_LOOK seconds
-- meanwhile. A refused upgrade, or a signer without a token for it, drops the session id: the
-- next attempt tickles for a new one (and renews the token).
local function lost(st, err, wait, ctx)
  local s = st._s
  ctx.attempts = ctx.attempts + 1
  if err then s:hinted(err) end
  st:_set("connecting", err)
  if not ctx.outage then
    ctx.outage = { since = s:now(), attempts = 0 }
    st:_event("lost", { error = err, reason = err and err.message })
  end
  ctx.outage.attempts = ctx.outage.attempts + 1
  if err and ((err.kind == "http" and (err.status == 401 or err.status == 403)) or err.kind == "auth"
      or (err.kind == "hangup" and err.close_code == 1008)) then
    s:push_forget()
  end
  local delay = kinds.backoff("push", ctx.attempts)
  st._kick = false
  if wait then
    pause(st, delay, M.REPAIR_LOOK, function() return s:state() == "ready" end)
  else
    pause(st, delay)
  end
end

local function run(st)
  local s = st._s
  local ctx = { attempts = 0, outage = nil, sid = nil }
  local w = waiter.new("yield", function() return st:_alive() end, function(method, path)
    return core.error{ kind = "closed", message = "the stream is closed", method = method, path = path }
  end)
  while st:_alive() do
    local sid, err, wait = session_id(st, w)
    if not st:_alive() then break end
    if sid then
      ctx.sid = sid
      local ws
      ws, err = s:push_socket(sid, st._o.max_message)
      if ws then
        local held <close> = ws -- luacheck: ignore held (freed however the coroutine ends)
        st._ws = ws
        err = hold(st, ws, ctx)
        st._ws = nil
        ws:close()
        if err and st._state == "open" then ctx.attempts = 0 end -- it was up: back off from the start
      end
    end
    if not st:_alive() then break end
    lost(st, err, wait, ctx)
  end
  if st._state ~= "closed" then
    st:_set("closed", s:closed() and channel_error("closed", "session is closed") or nil)
  end
end

-- s:stream(opts) -> st (docs/push.md). Raises on programmer errors (unknown option, wrong type),
-- at the caller's line. `hooks` (ibkr/push.lua, the keep-alive's channel): { pushed = function(state,
-- args) } called with each state a pushed sts message implies.
function M.new(s, opts, hooks)
  M.check(opts, "s:stream")
  local o, topics = resolve(opts)
  local st = setmetatable({
    _s = s, _o = o, _topics = topics, _queue = {}, _hooks = hooks or {},
    _state = "connecting", _detail = nil, _since = s:now(), _wake = s:now(),
    _ws = nil, _closed = false, _kick = false, _next_tic = math.huge, _delivered = 0,
  }, Stream)
  st._co = coroutine.create(function()
    -- however the coroutine ends (coroutine.close included), the stream ends with it
    local guard <close> = setmetatable({}, { __close = function() -- luacheck: ignore guard
      st._closed, st._ws, st._queue = true, nil, {}
      if st._state ~= "closed" then st:_set("closed", nil) end
    end })
    run(st)
  end)
  s:push_register(st, { close = function() st:close() end, announce = function(msg) announce(st, msg) end })
  return st
end

M.Stream = Stream

return M
