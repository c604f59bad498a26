-- ibkr-session keepalive --listen: a small HTTP/1.1 server on the keep-alive's own loop
-- (ibkr/cli/drive.lua steps it between the keep-alive's resumes). The listening socket and every
-- connection are watchers (pollables with :step): a step reads what is there up to one request
-- head (bounded), writes what the socket takes, never blocks, and answers at most one request, so
-- no client can hold the loop -- and the keep-alive's tickles -- back. Each connection is a
-- coroutine that yields what it waits for.
--
-- Bounds (M.LIMITS): at most max_connections open (a new client takes the place of the one that
-- has waited longest for a request, once those whose request has arrived are answered); a
-- request head within max_head bytes (ibkr/cli/http.lua), complete head_timeout seconds after its
-- first byte; an idle connection closed after idle_timeout; an answer the client does not read
-- within write_timeout dropped; at most max_requests per connection. luasocket is loaded here,
-- only when --listen is given.

local http = require("ibkr.cli.http")
local core = require("ibkr.core")

local M = {}

M.LIMITS = {
  max_connections = 32,
  head_timeout = 5,     -- seconds from a request's first byte to its complete head
  idle_timeout = 15,    -- seconds a connection may wait for a request's first byte
  write_timeout = 10,   -- seconds an answer may take to be written
  linger = 1,           -- seconds a closing connection reads what the client still sends
  max_requests = 100,   -- answers per connection before it is closed
  accept_batch = 16,    -- connections accepted per step
  read_chunk = 4096,    -- bytes read per step
}

M.ACCEPT_PAUSE = 0.1 -- seconds the listener rests after a failed accept (EMFILE...)

-- "[HOST:]PORT", "[IPV6]:PORT" -> host, port; or nil, message. No host: 127.0.0.1.
function M.parse_address(spec)
  if type(spec) ~= "string" or spec == "" then return nil, "--listen needs [HOST:]PORT" end
  local host, port = spec:match("^%[([%x:.]+)%]:(%d+)$")
  if not host then host, port = spec:match("^([^:%[%]]+):(%d+)$") end
  if not host and spec:match("^%d+$") then host, port = "127.0.0.1", spec end
  if not host then
    if spec:match("^:%d+$") then
      return nil, "--listen " .. spec .. ": name the host (0.0.0.0" .. spec .. " for every IPv4 address, "
        .. "[::]" .. spec .. " for IPv6, or just the port for 127.0.0.1)"
    end
    return nil, "--listen " .. spec .. ": expected [HOST:]PORT, e.g. 9100, 0.0.0.0:9100 or [::1]:9100"
  end
  port = math.tointeger(tonumber(port))
  if not port or port > 65535 then return nil, "--listen " .. spec .. ": the port must be 0-65535" end
  return host, port
end

------------------------------------------------------------------------------------------------
-- A connection: a coroutine yielding ("r" | "w" | "run", deadline), resumed with true (ready) or
-- false (its deadline passed).

local Conn = {}
Conn.__index = Conn

function Conn:pollfd()
  if self.want == "run" or self.closed then return nil end
  return self.fd
end
function Conn:events() return self.want == "w" and "w" or "r" end
function Conn:timeout()
  if self.closed then return nil end
  if self.want == "run" then return 0 end
  return math.max(0, self.deadline - self.srv.clock())
end

function Conn:step(ready)
  if self.closed then return end
  if not ready and self.want ~= "run" and self.srv.clock() < self.deadline then return end
  local ok, err = coroutine.resume(self.co, ready or self.want == "run")
  if not ok then
    self.srv:drop(self, "error")
    error(err, 0)
  end
  if coroutine.status(self.co) == "dead" then self.srv:drop(self) end
end

local function wait(c, want, deadline)
  c.want, c.deadline = want, deadline
  return coroutine.yield()
end

-- Reads one chunk into c.buf: what is there now, else once the socket is readable, until
-- `deadline`. Returns true, or nil, "timeout"|"closed".
local function fill(c, deadline)
  if c.eof then return nil, "closed" end
  while true do
    local data, err, partial = c.sock:receive(c.srv.limits.read_chunk)
    data = data or partial
    if data and #data > 0 then c.buf = c.buf .. data end
    if err and err ~= "timeout" then
      c.eof = true
      if not data or #data == 0 then return nil, "closed" end
    end
    if data and #data > 0 then return true end
    if not wait(c, "r", deadline) then return nil, "timeout" end
  end
end

-- Writes all of s, waiting until `deadline`. Returns true, or nil, "timeout" | "closed".
local function write_all(c, s, deadline)
  local i = 1
  while i <= #s do
    local n, err, last = c.sock:send(s, i)
    if n then
      i = n + 1
    elseif err == "timeout" then
      i = last + 1
      if i <= #s and not wait(c, "w", deadline) then return nil, "timeout" end
    else
      return nil, "closed"
    end
  end
  return true
end

-- The end of a connection after an answer that closes it: stop sending, read (and drop) what the
-- client still sends for a moment, so that it gets the answer rather than a reset.
local function linger(c)
  c.sock:shutdown("send")
  local stop = c.srv.clock() + c.srv.limits.linger
  local drained = 0
  while drained < 65536 do
    c.buf = ""
    if not fill(c, stop) then return end
    drained = drained + #c.buf
  end
end

-- The next request head: req, or nil (the client went away or timed out), or nil, status, why.
local function next_request(c)
  local head_deadline
  while true do
    if #c.buf > 0 then
      local req, used, why = http.parse(c.buf)
      if req then
        c.buf = c.buf:sub(used + 1)
        return req
      end
      if used then return nil, used, why end
      head_deadline = head_deadline or (c.srv.clock() + c.srv.limits.head_timeout)
    end
    local deadline = head_deadline or c.idle_deadline
    local ok, why = fill(c, deadline)
    if not ok then
      if why == "timeout" and head_deadline then return nil, 408, "request head not complete in time" end
      return nil -- gone, or idle for idle_timeout: closed without a word
    end
  end
end

-- The connection's life: requests answered one at a time, in order.
local function serve(c)
  local srv = c.srv
  local served = 0
  while true do
    c.idle_deadline = srv.clock() + srv.limits.idle_timeout
    local req, status, why = next_request(c)
    if not req then
      if not status then return end
      srv:count_answer(status)
      write_all(c, http.response(status, { { "Content-Type", "text/plain; charset=utf-8" } },
        why .. "\n", false, false), srv.clock() + srv.limits.write_timeout)
      if status == 408 then srv.counts.timeouts = srv.counts.timeouts + 1 end
      return linger(c)
    end
    served = served + 1
    local code, headers, body = srv:answer(req)
    local keep = req.keep_alive and served < srv.limits.max_requests and not c.eof
    local ok, werr = write_all(c, http.response(code, headers, body, req.method == "HEAD", keep),
      srv.clock() + srv.limits.write_timeout)
    if not ok then
      if werr == "timeout" then srv.counts.timeouts = srv.counts.timeouts + 1 end
      return
    end
    c.since = srv.clock()
    if not keep then return linger(c) end
    if #c.buf > 0 then wait(c, "run", 0) end -- a pipelined request: the others go first
  end
end

------------------------------------------------------------------------------------------------
-- The listener

local Listener = {}
Listener.__index = Listener

-- new{host=, port=, set=, answer=function(req) -> status, headers, body, clock=, limits=}
-- -> listener or nil, message (luasocket missing, address refused). Adds itself to `set`.
function M.new(o)
  local ok, socket = pcall(require, "socket")
  if not ok then return nil, "--listen needs luasocket (Debian: lua-socket)" end
  local limits = {}
  for k, v in pairs(M.LIMITS) do limits[k] = (o.limits and o.limits[k]) or v end
  local server, err = socket.bind(o.host, o.port, 128)
  if not server then
    return nil, string.format("--listen %s:%d: cannot listen: %s", o.host, o.port, tostring(err))
  end
  server:settimeout(0)
  local addr, port = server:getsockname()
  local l = setmetatable({
    server = server, set = o.set, answer_fn = o.answer, clock = o.clock or core.monotonic,
    limits = limits, conns = {}, nconns = 0, address = addr, port = math.tointeger(tonumber(port)),
    counts = { connections = 0, evicted = 0, timeouts = 0, errors = 0, answers = {} },
  }, Listener)
  o.set:add(l)
  return l
end

-- (while accept fails with no connection to close -- out of descriptors -- the listener rests
-- ACCEPT_PAUSE seconds rather than wake the loop at once again and again)
function Listener:pollfd()
  if not self.server or (self.paused and self.paused > self.clock()) then return nil end
  return self.server:getfd()
end
function Listener.events() return "r" end
function Listener:timeout()
  if self.paused and self.paused > self.clock() then return self.paused - self.clock() end
  return nil
end

function Listener:count_answer(status)
  local k = tostring(status)
  self.counts.answers[k] = (self.counts.answers[k] or 0) + 1
end

-- The answer to a request (the handler's), counted; a handler that raises answers 500.
function Listener:answer(req)
  local ok, status, headers, body = pcall(self.answer_fn, req)
  if not ok then
    self.counts.errors = self.counts.errors + 1
    status, headers, body = 500, { { "Content-Type", "text/plain; charset=utf-8" } }, "internal error\n"
  end
  self:count_answer(status)
  return status, headers, body
end

-- Before one connection makes room for another: every connection waiting to read whose socket
-- has bytes now (a request that arrived, not read yet) is stepped, and a complete request
-- answered, so no client whose request is here is dropped for one that came later. Returns
-- whether that freed a place (a connection closed after its answer).
function Listener:serve_arrived()
  local list, fds, evs = {}, {}, {}
  for c in pairs(self.conns) do
    if c.turn ~= self.turn and c.want == "r" then
      list[#list + 1], fds[#fds + 1], evs[#evs + 1] = c, c.fd, "r"
    end
  end
  if #list == 0 then return false end
  local n = self.nconns
  for _, i in ipairs({ core.poll(fds, 0, evs) }) do list[i]:step(true) end
  return self.nconns < n
end

-- The connection that has waited longest for a request (idle, half a head, an unread answer),
-- among those not accepted in this step (a burst of new clients never evicts itself), once
-- those whose request has arrived are served (Listener:serve_arrived).
function Listener:oldest()
  local victim
  for c in pairs(self.conns) do
    if c.turn ~= self.turn and (not victim or c.since < victim.since) then victim = c end
  end
  return victim
end

function Listener:step()
  self.paused = nil
  self.turn = (self.turn or 0) + 1
  for _ = 1, self.limits.accept_batch do
    if not self.server then return end
    local sock, err = self.server:accept()
    if not sock then
      if err == "timeout" then return end
      -- out of descriptors (a limit below max_connections): the oldest connection makes room,
      -- else rest a moment
      self.counts.errors = self.counts.errors + 1
      if self:serve_arrived() then goto continue end
      local victim = self:oldest()
      if not victim then
        self.paused = self.clock() + M.ACCEPT_PAUSE
        return
      end
      self.counts.evicted = self.counts.evicted + 1
      self:drop(victim)
      goto continue
    end
    sock:settimeout(0)
    if self.nconns >= self.limits.max_connections then self:serve_arrived() end
    if self.nconns >= self.limits.max_connections then
      local victim = self:oldest()
      if not victim then -- all of them new in this step: the rest waits in the backlog
        sock:close()
        return
      end
      self.counts.evicted = self.counts.evicted + 1
      self:drop(victim)
    end
    self.counts.connections = self.counts.connections + 1
    local c = setmetatable({ srv = self, sock = sock, fd = sock:getfd(), buf = "", since = self.clock(),
      want = "run", deadline = 0, turn = self.turn }, Conn)
    c.co = coroutine.create(serve)
    self.conns[c] = true
    self.nconns = self.nconns + 1
    self.set:add(c)
    local ok, cerr = coroutine.resume(c.co, c)
    if not ok then
      self:drop(c, "error")
      error(cerr, 0)
    end
    if coroutine.status(c.co) == "dead" then self:drop(c) end
    ::continue::
  end
end

function Listener:drop(c, why)
  if not c or c.closed then return end
  c.closed = true
  if why == "error" then self.counts.errors = self.counts.errors + 1 end
  c.sock:close()
  if coroutine.status(c.co) == "suspended" then coroutine.close(c.co) end
  self.conns[c] = nil
  self.nconns = self.nconns - 1
  self.set:remove(c)
end

function Listener:close()
  for c in pairs(self.conns) do self:drop(c) end
  if self.server then self.server:close() end
  self.server = nil
  self.set:remove(self)
end

-- The listener's own figures, as metric families (ibkr.metrics).
function Listener:families(metrics)
  local f = metrics.family("ibkr_listener_answers_total", "counter",
    "Answers of the --listen endpoint, by HTTP status code")
  local codes = {}
  for k in pairs(self.counts.answers) do codes[#codes + 1] = k end
  table.sort(codes)
  for _, k in ipairs(codes) do f:add(self.counts.answers[k], { { "code", k } }) end
  local c = self.counts
  return {
    metrics.family("ibkr_listener_connections_total", "counter",
      "Connections accepted by the --listen endpoint"):add(c.connections),
    metrics.family("ibkr_listener_open_connections", "gauge", "Connections open now"):add(self.nconns),
    metrics.family("ibkr_listener_evicted_total", "counter",
      "Connections closed to make room for a new one (the limit was reached)"):add(c.evicted),
    metrics.family("ibkr_listener_timeouts_total", "counter",
      "Connections closed because a request head or an answer took too long"):add(c.timeouts),
    metrics.family("ibkr_listener_errors_total", "counter",
      "Failed accepts (out of descriptors) and faults of the endpoint's own code"):add(c.errors),
    f,
  }
end

return M
