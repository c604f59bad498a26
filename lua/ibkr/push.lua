-- The keep-alive's push channel (s:keepalive{ push = true }): a stream of the session
-- (ibkr/stream.lua) driven from inside the keep-alive's own waits, so the host still drives one
-- coroutine. What it adds to the keep-alive:
--   - a pushed sts change (authenticated = false, competing = true, connected = false) is the
--     keep-alive's state at once: on_state and s:state() in the resume that read the frame;
--   - a pushed change, or a lost channel, cuts the keep-alive's pause short: it checks the gateway
--     over REST at once (which confirms the drop, or the recovery IBKR never pushes, and repairs);
--   - while the keep-alive waits (between tickles, or for a REST answer), the host waits on the
--     channel's descriptor; during a REST exchange the channel is looked at every PUSH_CAP seconds.
-- The channel starts after the keep-alive's first REST observation (its tickle carries the session
-- id the websocket is authenticated with) and ends with the keep-alive.

local core = require("ibkr.core")
local state = require("ibkr.state")
local stream = require("ibkr.stream")

local M = {}

M.PUSH_CAP = 0.25  -- seconds: the longest the channel goes unlooked-at during a REST exchange
M.HOST_SLICE = 0.1 -- seconds: an inline loop with a host's sleep looks at the channel this often
M.PROBE = 1        -- seconds the REST check after a silent channel gets: a gateway silent on its
                   -- websocket that does not answer REST within this is down

local Push = {}
Push.__index = Push

-- The pollable the keep-alive yields: the REST exchange's (with a shorter timeout) or the
-- channel's, with the keep-alive's own deadline as the timeout.
local function pollable(px)
  local P = {}
  function P.pollfd() return px.target and px.target:pollfd() or -1 end
  function P.events() return px.target and px.target:events() or "r" end
  function P.timeout()
    local t = px.until_ - px.s:now()
    local tt = px.target and px.target:timeout()
    if type(tt) == "number" and tt < t then t = tt end
    return t > 0 and t or 0
  end
  return P
end

-- Resumes the channel's coroutine once (it never blocks); returns the seconds it wants to wait.
-- What the channel waits on comes with it: its connection, or its own tickle's request (self.chan).
-- A change of the session's state to one worse than the keep-alive's, seen meanwhile by anyone
-- (the channel's own tickle, another stream's pushed sts), makes the keep-alive ask over REST at
-- once: else a channel waiting for the keep-alive's repair and a keep-alive waiting for its
-- channel's news would wait for each other.
function Push:service()
  local co = self.co
  if not self.started or coroutine.status(co) ~= "suspended" then return math.huge end
  local ok, secs, yielded = coroutine.resume(co)
  if not ok then -- a stream never raises; if it ever did, the keep-alive goes on without it
    self.rep.error(core.error{ kind = "protocol", message = "push channel failed: " .. tostring(secs) })
    self.started = false
    return math.huge
  end
  local seen = self.s:state()
  if seen ~= self.seen then -- once per change of the session's state
    self.seen = seen
    if state.worse(seen, self.rep.current) then self.interrupt = true end
  end
  if coroutine.status(co) ~= "suspended" then return math.huge end
  local t = type(yielded)
  self.chan = (t == "table" or t == "userdata") and yielded or self.st
  return type(secs) == "number" and secs >= 0 and secs or 0
end

-- The waiter's wait in a coroutine: yields with the combined pollable. `cut`: the channel's news
-- ends the wait (the keep-alive's pause between tickles, and only it: a call's pacing wait, its
-- backoff before a retry, a repair's poll must last their time, or the next request goes out
-- before its slot — a tickle 0.26 s after the last one, a 429 from the gateway).
local function yield_wait(px)
  return function(secs, req, cut)
    local stop = px.s:now() + secs
    repeat
      local chan = px:service()
      if cut and px.interrupt then return end
      local now = px.s:now()
      if req then
        px.target, px.until_ = req, now + math.min(chan, M.PUSH_CAP)
        coroutine.yield(math.min(secs, chan), px.P)
        return -- a request in flight: the caller steps it, then waits again
      end
      local left = stop - now
      if left <= 0 then return end
      local t = math.min(left, chan)
      px.target, px.until_ = px.chan or px.st, now + t
      coroutine.yield(t, px.P)
    until not px.live()
  end
end

-- The waiter's wait in an inline loop: the host's sleep in slices, or poll(2) on the channel.
local function loop_wait(px, base, mode)
  return function(secs, req, cut)
    local stop = px.s:now() + secs
    repeat
      local chan = px:service()
      if cut and px.interrupt then return end
      local left = stop - px.s:now()
      if left <= 0 then return end
      local t = math.min(left, chan)
      if mode == "host" or req then
        base.wait(math.min(t, M.HOST_SLICE), req)
        if req then return end
      else
        local p = px.chan or px.st
        px.s:wait_fd(p:pollfd(), p:events(), t, M.HOST_SLICE)
      end
    until not px.live()
  end
end

-- push.new(s, base, mode [, opts]): `base` the keep-alive's waiter (ibkr/waiter.lua), mode
-- "yield", "host" or "block"; opts: the channel's s:stream options (topics, on_message...), whose
-- on_message also gets every message, and whose callback errors go to the keep-alive's on_error.
-- px.w is the waiter to use instead.
function M.new(s, base, mode, opts)
  local px = setmetatable({ s = s, live = base.live, interrupt = false, started = false,
    target = nil, until_ = 0, rep = nil }, Push)
  px.P = pollable(px)
  local so = {}
  for k, v in pairs(opts or {}) do so[k] = v end
  local user = so.on_message
  so.on_message = function(msg)
    px:message(msg)
    if user then user(msg) end
  end
  so.on_error = so.on_error or function(err) if px.rep then px.rep.error(err) end end
  px.st = stream.new(s, so, { pushed = function(new, detail) px:pushed(new, detail) end })
  px.co = px.st:coroutine()
  local w = { live = base.live, gone = base.gone, step = base.step, chunk = base.chunk }
  w.wait = mode == "yield" and yield_wait(px) or loop_wait(px, base, mode)
  w.interrupted = function() return px.interrupt end
  w.clear = function() px.interrupt = false end
  px.w = w
  return px
end

-- the keep-alive's reporter (its on_state, s:state()); the channel starts connecting. Once.
function Push:start(rep)
  if self.started then return end
  self.rep = rep
  self.started = true
end

-- A pushed state: a drop worse than the keep-alive's state is reported at once; any difference is
-- checked over REST at once (a recovery waits for REST's word).
function Push:pushed(new, detail)
  local rep = self.rep
  if not rep or new == rep.current then return end
  if state.worse(new, rep.current) then rep.state(new, detail) end
  self.interrupt = true
end

-- The channel's own events: a loss makes the keep-alive look at the gateway at once (within PROBE
-- seconds when the channel fell silent: then the gateway may well be hung). The session's stats
-- follow the channel: open at each greeting, lost at each loss.
function Push:message(msg)
  if msg.topic == "ibkr" and msg.event == "lost" then
    self.interrupt = true
    if type(msg.error) == "table" and msg.error.kind == "timeout" then self.silent = true end
    self.s:note_push(false) -- s:stats(): push_connected, push_reconnects (keepalive --listen's metrics)
  elseif msg.topic == "system" and msg.success ~= nil then
    self.s:note_push(true)
  end
end

-- The deadline (the session's clock) of the keep-alive's next REST check, or nil; once.
function Push:probe_deadline()
  if not self.silent then return nil end
  self.silent = false
  return self.s:now() + M.PROBE
end

function Push:close()
  self.st:close()
  if coroutine.status(self.co) == "suspended" then coroutine.close(self.co) end
end
Push.__close = Push.close

return M
