-- The mock gateway's HTTP/1.1 server: one socket.select loop, one coroutine per connection.
-- A connection coroutine yields ("read"|"write"|"sleep"|"turn", deadline) and is resumed with
-- "ready" or "timeout"; nothing ever blocks the loop, so a slow or hostile client only costs its
-- own connection. Each connection does a bounded share of work per turn of the loop (a few
-- requests, so many bytes read and written), then yields "turn" and waits for every other ready
-- connection to have its share: a client that pipelines without end, or reads a huge answer as
-- fast as it comes, cannot keep the others waiting. An error inside a connection closes that
-- connection only.
local socket = require("socket")
local http = require("ibkr.mock.net.http")

local server = {}
server.__index = server

local function default_clock()
  local ok, system = pcall(require, "system")
  if ok and type(system.monotime) == "function" then
    return system.monotime
  end
  return socket.gettime
end

server.defaults = {
  head_timeout = 5,        -- a request head must be complete this long after its first byte
  keepalive_timeout = 120, -- an idle keep-alive connection is closed after this
  body_timeout = 10,       -- a request body must be complete this long after its head
  write_timeout = 30,      -- a response that cannot be written for this long is dropped
  max_head = 16 * 1024,
  max_headers = 100,
  max_body = 1024 * 1024,
  max_connections = 512,
  turn_requests = 4,       -- requests a connection may serve per turn of the loop
  turn_bytes = 256 * 1024, -- bytes it may read, and bytes it may write, per turn
}

-- opts: host, port, ssl_context (or nil), handler(req, conn) -> response, log(fmt, ...),
-- clock, and any of server.defaults. Returns a server or nil, err.
function server.new(opts)
  local self = setmetatable({}, server)
  for k, v in pairs(server.defaults) do
    self[k] = v
  end
  for k, v in pairs(opts) do
    self[k] = v
  end
  self.clock = opts.clock or default_clock()
  self.log = opts.log or function() end
  local listener, err = socket.bind(opts.host or "127.0.0.1", opts.port or 0, 128)
  if not listener then
    return nil, string.format("cannot listen on %s:%s: %s", tostring(opts.host), tostring(opts.port),
      tostring(err))
  end
  listener:settimeout(0)
  self.listener = listener
  self.address, self.port = listener:getsockname()
  self.port = math.tointeger(tonumber(self.port))
  self.conns = {}
  self.by_sock = {}
  self.nconns = 0
  self.next_id = 0
  self.wakers = {}
  self.stats = { connections = 0, requests = 0, active = 0, errors = 0 }
  return self
end

-- Something else to watch in select (an object with getfd); fn() runs when it is readable.
function server:add_waker(obj, fn)
  self.wakers[obj] = fn
end

---------------------------------------------------------------------------------------------
-- Inside a connection coroutine

local yield = coroutine.yield

local function wait(kind, deadline)
  return yield(kind, deadline)
end

function server:sleep(seconds)
  if seconds and seconds > 0 then
    wait("sleep", self.clock() + seconds)
  end
end

-- Counts work done by conn in this turn of the loop ("requests" or "read"/"written" bytes);
-- once it had its share, waits for the next turn (the others go first).
local function spend(self, conn, what, n)
  local used = conn.work[what] + n
  conn.work[what] = used
  local limit = what == "requests" and self.turn_requests or self.turn_bytes
  if used >= limit then
    wait("turn")
  end
end

-- Holds conn's answer back until server:release(tag) (or until `seconds` passed, or the server
-- stops). Returns true when released.
function server:hold(conn, tag, seconds)
  conn.held = tag
  local deadline = self.clock() + seconds
  while conn.held ~= nil and not self.stopping do
    if wait("sleep", deadline) == "timeout" and self.clock() >= deadline then
      break
    end
  end
  local released = conn.held == nil
  conn.held = nil
  return released
end

-- Releases the answers held with `tag` (every held answer when tag is nil): they go out in this
-- turn of the loop. Returns how many.
function server:release(tag)
  local n = 0
  for conn in pairs(self.conns) do
    if conn.held ~= nil and (tag == nil or conn.held == tag) then
      conn.held = nil
      conn.deadline = self.clock()
      n = n + 1
    end
  end
  return n
end

-- The tags of the answers held now, one per held answer, in connection order.
function server:held()
  local list = {}
  for conn in pairs(self.conns) do
    if conn.held ~= nil then
      list[#list + 1] = conn
    end
  end
  table.sort(list, function(a, b) return a.id < b.id end)
  for i, conn in ipairs(list) do
    list[i] = conn.held
  end
  return list
end

-- Waits for the socket to become ready for kind ("read" | "write") until deadline. Returns true,
-- or nil, "timeout" | "stalled". A socket that select reports ready this many times in a row
-- while the TLS layer makes no progress is a dead peer: give up on it instead of spinning.
local MAX_IDLE_WAKEUPS = 1000

local function wait_ready(conn, kind, deadline)
  if wait(kind, deadline) == "timeout" then
    return nil, "timeout"
  end
  conn.idle_wakeups = (conn.idle_wakeups or 0) + 1
  if conn.idle_wakeups > MAX_IDLE_WAKEUPS then
    return nil, "stalled"
  end
  return true
end

-- After a read error the peer is gone. Over TLS the session is then unusable: OpenSSL 3 marks it
-- failed and luasec's send on it loops for ever inside C (it reads errno 0 as success), so
-- nothing may be sent on it again. A plain TCP peer that only shut down its sending side (EOF)
-- may still read our answer.
local function read_failed(conn, err)
  if conn.tls or err ~= "closed" then
    conn.broken = err or "closed"
  end
  conn.eof = true
end

-- Reads more bytes into conn.buf. Returns true, or nil and "timeout" | "closed" | error.
local function fill(self, conn, deadline)
  while true do
    if conn.eof then
      return nil, "closed"
    end
    local data, err, partial = conn.sock:receive(65536)
    local got = data or partial
    if err and err ~= "timeout" and err ~= "wantread" and err ~= "wantwrite" then
      read_failed(conn, err)
    end
    if got and #got > 0 then
      conn.buf = conn.buf .. got
      conn.idle_wakeups = 0
      spend(self, conn, "read", #got)
      return true
    end
    local ok, werr
    if err == "timeout" or err == "wantread" then
      ok, werr = wait_ready(conn, "read", deadline)
    elseif err == "wantwrite" then
      ok, werr = wait_ready(conn, "write", deadline)
    else
      return nil, err or "closed"
    end
    if not ok then
      return nil, werr
    end
    if self.stopping then
      return nil, "closed"
    end
  end
end

-- Writes all of data. Returns true or nil, err. Never touches a connection whose read side
-- failed (see read_failed).
local function send_all(self, conn, data)
  local i, n = 1, #data
  local deadline = self.clock() + self.write_timeout
  while i <= n do
    if conn.broken then
      return nil, conn.broken
    end
    local last, err, partial = conn.sock:send(data, i, math.min(n, i + self.turn_bytes - 1))
    local ok, werr = true, nil
    local sent = (last or partial or i - 1) + 1
    if sent > i then
      conn.idle_wakeups = 0
      spend(self, conn, "written", sent - i)
    end
    i = sent
    if not last then
      if err == "timeout" or err == "wantwrite" then
        ok, werr = wait_ready(conn, "write", deadline)
      elseif err == "wantread" then
        ok, werr = wait_ready(conn, "read", deadline)
      else
        conn.broken = err
        return nil, err
      end
    end
    if not ok then
      return nil, werr
    end
  end
  return true
end

local function handshake(self, conn)
  local deadline = self.clock() + self.head_timeout
  while true do
    local ok, err = conn.sock:dohandshake()
    if ok then
      return true
    end
    local werr
    if err == "wantread" or err == "timeout" then
      ok, werr = wait_ready(conn, "read", deadline)
    elseif err == "wantwrite" then
      ok, werr = wait_ready(conn, "write", deadline)
    else
      conn.broken = err
      return nil, "handshake failed: " .. tostring(err)
    end
    if not ok then
      return nil, "handshake " .. werr
    end
  end
end

-- Reads a request head. Returns the request, or nil and (status to answer with | "closed").
local function read_head(self, conn, first)
  conn.idle_since = conn.idle_since or self.clock()
  local deadline = self.clock() + (first and self.head_timeout or self.keepalive_timeout)
  local started = first
  while true do
    local lead = conn.buf:match("^[\r\n]+")
    if lead then
      conn.buf = conn.buf:sub(#lead + 1)
    end
    if #conn.buf > 0 then
      if not started then
        started = true
        deadline = self.clock() + self.head_timeout
      end
      if not http.plausible_start(conn.buf) then
        return nil, 400
      end
      local s, e = conn.buf:find("\r\n\r\n", 1, true)
      if s then
        if e > self.max_head then
          return nil, 431
        end
        local head = conn.buf:sub(1, s - 1)
        conn.buf = conn.buf:sub(e + 1)
        conn.idle_since = nil
        return http.parse_head(head, self.max_headers)
      end
      local eol = conn.buf:find("\r\n", 1, true)
      if eol then
        local ok, status = http.parse_request_line(conn.buf:sub(1, eol - 1))
        if not ok then
          return nil, status
        end
      elseif #conn.buf > 8192 then
        return nil, 414
      end
      if #conn.buf > self.max_head then
        return nil, 431
      end
    end
    local ok, err = fill(self, conn, deadline)
    if not ok then
      if err == "timeout" and #conn.buf > 0 then
        return nil, 408
      end
      return nil, "closed"
    end
  end
end

local function read_exact(self, conn, n, deadline)
  while #conn.buf < n do
    local ok, err = fill(self, conn, deadline)
    if not ok then
      return nil, err
    end
  end
  local data = conn.buf:sub(1, n)
  conn.buf = conn.buf:sub(n + 1)
  return data
end

local function read_line(self, conn, deadline, max)
  while true do
    local s, e = conn.buf:find("\r\n", 1, true)
    if s then
      local line = conn.buf:sub(1, s - 1)
      conn.buf = conn.buf:sub(e + 1)
      return line
    end
    if #conn.buf > max then
      return nil, 400
    end
    local ok, err = fill(self, conn, deadline)
    if not ok then
      return nil, err
    end
  end
end

-- Reads a chunked body. Returns the body or nil, status|err.
local function read_chunked(self, conn, deadline)
  local parts, total = {}, 0
  while true do
    local line, err = read_line(self, conn, deadline, 1024)
    if not line then
      return nil, err
    end
    local hex = line:match("^(%x+)[ \t]*;?.*$")
    if not hex or #hex > 8 then
      return nil, 400
    end
    local size = tonumber(hex, 16)
    if size == 0 then
      -- trailers, up to the empty line
      repeat
        local t, terr = read_line(self, conn, deadline, 8192)
        if not t then
          return nil, terr
        end
      until t == ""
      return table.concat(parts)
    end
    total = total + size
    if total > self.max_body then
      return nil, 413
    end
    local data, derr = read_exact(self, conn, size + 2, deadline)
    if not data then
      return nil, derr
    end
    if data:sub(-2) ~= "\r\n" then
      return nil, 400
    end
    parts[#parts + 1] = data:sub(1, -3)
  end
end

-- Reads the body of req (sending 100 Continue when asked). Returns true or nil, status|err.
local function read_body(self, conn, req)
  local h = req.headers
  local te, cl = h["transfer-encoding"], h["content-length"]
  local length
  if te then
    if cl then
      return nil, 400
    end
    if te:lower() ~= "chunked" then
      return nil, 501
    end
  elseif cl then
    if not cl:find("^%d+$") or #cl > 15 then
      return nil, 400
    end
    length = tonumber(cl)
    if length > self.max_body then
      return nil, 413
    end
  else
    length = 0
  end
  local expect = h.expect
  if expect then
    if expect:lower() ~= "100-continue" then
      return nil, 417
    end
    if req.minor >= 1 and (te or length > 0) and #conn.buf == 0 then
      local ok, err = send_all(self, conn, "HTTP/1.1 100 Continue\r\n\r\n")
      if not ok then
        return nil, err
      end
    end
  end
  local deadline = self.clock() + self.body_timeout
  local body, err
  if te then
    body, err = read_chunked(self, conn, deadline)
  else
    body, err = read_exact(self, conn, length, deadline)
  end
  if not body then
    return nil, err == "timeout" and 408 or err
  end
  req.body = body
  return true
end

-- Writes a response described by a table (see ibkr.mock.gateway for the fields).
-- Returns true when the connection may be kept, false when it must be closed.
-- The head of a response, and whether the connection is kept after it.
local function response_head(req, resp, keep)
  local headers = { { "Date", http.date() }, { "Server", "ibkr-mock-gateway" } }
  for _, hv in ipairs(resp.headers or {}) do
    headers[#headers + 1] = hv
  end
  if resp.chunked then
    headers[#headers + 1] = { "Transfer-Encoding", "chunked" }
  elseif resp.stream then
    headers[#headers + 1] = { "Content-Length", tostring(resp.stream.length) }
  elseif not resp.no_length then
    headers[#headers + 1] = { "Content-Length", tostring(#(resp.body or "")) }
  end
  if resp.close then
    keep = false
  end
  if not keep then
    headers[#headers + 1] = { "Connection", "close" }
  elseif req and req.minor == 0 then
    headers[#headers + 1] = { "Connection", "keep-alive" }
  end
  return http.format_head(resp.status, resp.reason, headers), keep
end

local function write_response(self, conn, req, resp, keep)
  if resp.hold then
    self:hold(conn, resp.hold.tag, resp.hold.seconds)
  end
  if resp.delay and resp.delay > 0 then
    self:sleep(resp.delay)
  end
  if resp.drop == "before" then
    return false
  end
  local head_only = req and req.method == "HEAD"
  local body = resp.body or ""
  local stream = resp.stream
  local head
  head, keep = response_head(req, resp, keep)
  if head_only then
    local ok = send_all(self, conn, head)
    return ok and keep
  end
  if resp.chunked then
    local parts, n = { head }, #body
    local size = math.max(1, math.ceil(n / 3))
    local i = 1
    while i <= n do
      parts[#parts + 1] = http.chunk(body:sub(i, i + size - 1))
      i = i + size
    end
    parts[#parts + 1] = "0\r\n\r\n"
    local ok = send_all(self, conn, table.concat(parts))
    return ok and keep
  end
  if stream then
    if not send_all(self, conn, head) then
      return false
    end
    for chunk in stream.chunks() do
      if not send_all(self, conn, chunk) then
        return false
      end
    end
    return keep
  end
  if resp.drop == "mid" or resp.pause_mid then
    local half = math.floor(#body / 2)
    if not send_all(self, conn, head .. body:sub(1, half)) then
      return false
    end
    if resp.drop == "mid" then
      return false
    end
    self:sleep(resp.pause_mid)
    local ok = send_all(self, conn, body:sub(half + 1))
    return ok and keep
  end
  local ok = send_all(self, conn, head .. body)
  return ok and keep
end

-- An error answer of the server itself (bad request, too large...), then close.
local function refuse(self, conn, status)
  local body = '{"error":"' .. http.reason(status) .. '"}'
  send_all(self, conn, http.format_head(status, nil, {
    { "Date", http.date() }, { "Server", "ibkr-mock-gateway" },
    { "Content-Type", "application/json" }, { "Content-Length", tostring(#body) },
    { "Connection", "close" },
  }) .. body)
  -- Lingering close: stop sending, then drain briefly so that the peer reads the answer
  -- instead of a reset caused by its unread bytes.
  if conn.sock.shutdown and not conn.tls then
    conn.sock:shutdown("send")
    conn.buf = ""
    local deadline = self.clock() + 1
    local drained = 0
    while drained < 262144 do
      local ok = fill(self, conn, deadline)
      if not ok then
        break
      end
      drained = drained + #conn.buf
      conn.buf = ""
    end
  end
end

local function serve_connection(self, conn)
  if conn.tls then
    local ok, err = handshake(self, conn)
    if not ok then
      self.log("conn %d: %s", conn.id, err)
      return
    end
  end
  local first = true
  while not self.stopping do
    local req, status = read_head(self, conn, first)
    first = false
    if not req then
      if status ~= "closed" then
        self.log("conn %d: refused with %s", conn.id, tostring(status))
        refuse(self, conn, status)
      end
      return
    end
    local ok, err = read_body(self, conn, req)
    if not ok then
      if type(err) == "number" then
        refuse(self, conn, err)
      end
      return
    end
    req.conn_id = conn.id
    req.tls = conn.tls
    req.peer = conn.peer
    self.stats.requests = self.stats.requests + 1
    local keep = http.wants_keepalive(req)
    local resp = self.handler(req, conn)
    if not write_response(self, conn, req, resp, keep) then
      return
    end
    spend(self, conn, "requests", 1)
  end
end

---------------------------------------------------------------------------------------------
-- The loop

-- luasec's close runs a *blocking* SSL_shutdown on a connected session: a peer that reads
-- nothing could hold it, and with it the whole mock, for ever. Unless the session is healthy and
-- the socket can take the close_notify at once, cut the TCP connection first so that it fails
-- at once.
local function disarm_tls(conn)
  if not conn.raw then
    return
  end
  if not conn.broken then
    local _, writable = socket.select(nil, { conn.sock }, 0)
    if writable and writable[1] then
      return
    end
  end
  conn.raw:setfd(conn.sock:getfd())
  conn.raw:shutdown("both")
  conn.raw:setfd(socket._SOCKETINVALID)
end

function server:close_conn(conn)
  if conn.closed then
    return
  end
  conn.closed = true
  disarm_tls(conn)
  conn.sock:close()
  self.conns[conn] = nil
  self.by_sock[conn.sock] = nil
  self.nconns = self.nconns - 1
  self.stats.active = self.nconns
end

local function resume(self, conn, ...)
  conn.work.requests, conn.work.read, conn.work.written = 0, 0, 0 -- a new turn: a new share
  local ok, kind, deadline = coroutine.resume(conn.co, ...)
  if not ok then
    self.stats.errors = self.stats.errors + 1
    io.stderr:write(string.format("ibkr-mock-gateway: connection %d failed: %s\n", conn.id,
      debug.traceback(conn.co, tostring(kind))))
    self:close_conn(conn)
    return
  end
  if coroutine.status(conn.co) == "dead" then
    self:close_conn(conn)
    return
  end
  conn.kind, conn.deadline = kind, deadline
end

-- Wraps an accepted socket into a connection and starts its coroutine.
local function open_conn(self, c)
  c:settimeout(0)
  c:setoption("tcp-nodelay", true)
  self.next_id = self.next_id + 1
  local conn = { id = self.next_id, buf = "", tls = self.ssl_context ~= nil, idle_since = self.clock(),
    work = { requests = 0, read = 0, written = 0 } }
  conn.peer = c:getpeername()
  if conn.tls then
    local s, err = require("ssl").wrap(c, self.ssl_context)
    if not s then
      self.log("conn %d: ssl.wrap failed: %s", conn.id, tostring(err))
      c:close()
      return
    end
    s:settimeout(0)
    conn.sock, conn.raw = s, c
  else
    conn.sock = c
  end
  self.conns[conn] = true
  self.by_sock[conn.sock] = conn
  self.nconns = self.nconns + 1
  self.stats.connections = self.stats.connections + 1
  self.stats.active = self.nconns
  conn.co = coroutine.create(function()
    return serve_connection(self, conn)
  end)
  resume(self, conn)
end

-- At max_connections, a new client takes the place of the connection that has waited longest
-- for a request (handshake or head not begun or not finished, or idle keep-alive): a flood of
-- half-open connections cannot lock others out. Returns false when every connection is busy.
local function make_room(self)
  local oldest
  for conn in pairs(self.conns) do
    if conn.idle_since and (not oldest or conn.idle_since < oldest.idle_since) then
      oldest = conn
    end
  end
  if not oldest then
    return false
  end
  self.log("conn %d: closed to make room for a new connection", oldest.id)
  self:close_conn(oldest)
  return true
end

local function accept(self)
  for _ = 1, 64 do
    local c = self.listener:accept()
    if not c then
      return
    end
    if self.nconns < self.max_connections or make_room(self) then
      open_conn(self, c)
    else
      c:close()
    end
  end
end

-- Runs one round of the loop, waiting at most max_wait seconds.
function server:step(max_wait)
  local recvt, sendt = { self.listener }, {}
  for obj in pairs(self.wakers) do
    recvt[#recvt + 1] = obj
  end
  local now = self.clock()
  local earliest = now + (max_wait or 1)
  local turns = {} -- connections that had their share last turn and want more
  for conn in pairs(self.conns) do
    if conn.kind == "read" then
      recvt[#recvt + 1] = conn.sock
    elseif conn.kind == "write" then
      sendt[#sendt + 1] = conn.sock
    elseif conn.kind == "turn" then
      turns[#turns + 1] = conn
      earliest = now
    end
    if conn.deadline and conn.deadline < earliest then
      earliest = conn.deadline
    end
  end
  local timeout = earliest - now
  if timeout < 0 then
    timeout = 0
  end
  local r, w = socket.select(recvt, sendt, timeout)
  local ready = {}
  for _, list in ipairs({ r or {}, w or {} }) do
    for _, sock in ipairs(list) do
      if sock == self.listener then
        accept(self)
      elseif self.wakers[sock] then
        self.wakers[sock]()
      else
        local conn = self.by_sock[sock]
        if conn then
          ready[#ready + 1] = conn
        end
      end
    end
  end
  table.sort(turns, function(a, b) return a.id < b.id end)
  for _, list in ipairs({ ready, turns }) do
    for _, conn in ipairs(list) do
      if not conn.closed and not conn.resumed then
        conn.resumed = true
        resume(self, conn, "ready")
      end
    end
  end
  now = self.clock()
  local due = {}
  for conn in pairs(self.conns) do
    if not conn.resumed and conn.deadline and conn.deadline <= now then
      due[#due + 1] = conn
    end
    conn.resumed = nil
  end
  table.sort(due, function(a, b) return a.id < b.id end)
  for _, conn in ipairs(due) do
    if not conn.closed then
      resume(self, conn, "timeout")
    end
  end
end

function server:stop()
  self.stopping = true
end

function server:run(max_wait)
  while not self.stopping do
    self:step(max_wait)
  end
  self:close()
end

function server:close()
  self.stopping = true
  for conn in pairs(self.conns) do
    self:close_conn(conn)
  end
  if self.listener then
    self.listener:close()
    self.listener = nil
  end
end

return server
