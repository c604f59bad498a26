-- A raw websocket server for specs where the bytes on the wire matter (hostile frames, odd
-- upgrades), in the spec's own process: luasocket (luasec for TLS), stepped by the spec between
-- resumes of the client with M.drive. Written from RFC 6455 without any code of the client (its
-- own SHA-1), so it is the independent other side.
--
--   local srv = wsserver.new{ tls = false }      -- listens on 127.0.0.1:0; srv.url is a base_url
--   srv.on_upgrade = function(conn) conn:accept(); conn:text('{"topic":"system","success":"u"}') end
--   srv.on_frame = function(conn, f) ... end      -- f = { opcode =, payload =, fin =, masked = }
-- It answers POST /tickle itself ({"session":"s3ss10n", iserver.authStatus authenticated}) unless
-- srv.on_http is set. srv.conns lists every connection (conn.request: the request line and
-- headers of its websocket upgrade; conn.frames: what the client sent, unmasked; conn.paused =
-- true: the server stops reading it). A client's close frame is answered as RFC 6455 7.1.1 asks of
-- a server: the same close frame back, then the end of the connection (conn.closed_by_client;
-- srv.keep_after_close = true: neither, the connection stays open).
local socket = require("socket")
local mime = require("mime")
local core = require("ibkr.core")

local M = {}

M.SESSION = "s3ss10n"
M.SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1
M.GREETING = '{"topic":"system","success":"user1","isFT":false,"isPaper":true}'

------------------------------------------------------------------------------------------------
-- SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept

local function rol(x, n) return ((x << n) | (x >> (32 - n))) & 0xffffffff end

function M.sha1(msg)
  local h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
  local ml = #msg * 8
  msg = msg .. "\128" .. string.rep("\0", (55 - #msg) % 64) .. string.pack(">I8", ml)
  for chunk = 1, #msg, 64 do
    local w = {}
    for i = 0, 15 do w[i] = string.unpack(">I4", msg, chunk + i * 4) end
    for i = 16, 79 do w[i] = rol(w[i - 3] ~ w[i - 8] ~ w[i - 14] ~ w[i - 16], 1) end
    local a, b, c, d, e = h0, h1, h2, h3, h4
    for i = 0, 79 do
      local f, k
      if i < 20 then f, k = (b & c) | (~b & d), 0x5A827999
      elseif i < 40 then f, k = b ~ c ~ d, 0x6ED9EBA1
      elseif i < 60 then f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
      else f, k = b ~ c ~ d, 0xCA62C1D6 end
      local t = (rol(a, 5) + (f & 0xffffffff) + e + k + w[i]) & 0xffffffff
      e, d, c, b, a = d, c, rol(b, 30), a, t
    end
    h0, h1 = (h0 + a) & 0xffffffff, (h1 + b) & 0xffffffff
    h2, h3, h4 = (h2 + c) & 0xffffffff, (h3 + d) & 0xffffffff, (h4 + e) & 0xffffffff
  end
  return string.pack(">I4I4I4I4I4", h0, h1, h2, h3, h4)
end

function M.accept_of(key)
  return (mime.b64(M.sha1(key .. "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")))
end

------------------------------------------------------------------------------------------------
-- Frames

-- The bytes of one frame. opts: fin (default true), rsv (bits, default 0), mask (a 4-byte key:
-- a masked frame, which a server must never send), length (announce this length instead).
function M.frame(opcode, payload, opts)
  opts = opts or {}
  payload = payload or ""
  local b1 = (opts.fin == false and 0 or 0x80) | ((opts.rsv or 0) << 4) | opcode
  local len = opts.length or #payload
  local mbit = opts.mask and 0x80 or 0
  local head
  if len < 126 then head = string.pack("BB", b1, mbit | len)
  elseif len < 65536 then head = string.pack(">BBI2", b1, mbit | 126, len)
  else head = string.pack(">BBI8", b1, mbit | 127, len) end
  if opts.mask then
    local k = { opts.mask:byte(1, 4) }
    local out = {}
    for i = 1, #payload do out[i] = string.char(payload:byte(i) ~ k[(i - 1) % 4 + 1]) end
    return head .. opts.mask .. table.concat(out)
  end
  return head .. payload
end

-- One client frame parsed from buf at position i: frame, next position; or nil (incomplete).
local function parse_frame(buf, i)
  if #buf - i + 1 < 2 then return nil end
  local b1, b2 = buf:byte(i, i + 1)
  local len, p = b2 & 0x7f, i + 2
  if len == 126 then
    if #buf < p + 1 then return nil end
    len, p = string.unpack(">I2", buf, p)
  elseif len == 127 then
    if #buf < p + 7 then return nil end
    len, p = string.unpack(">I8", buf, p)
  end
  local masked = b2 & 0x80 ~= 0
  local key
  if masked then
    if #buf < p + 3 then return nil end
    key = { buf:byte(p, p + 3) }
    p = p + 4
  end
  if #buf < p + len - 1 then return nil end
  local data = buf:sub(p, p + len - 1)
  if masked then
    local out = {}
    for j = 1, #data do out[j] = string.char(data:byte(j) ~ key[(j - 1) % 4 + 1]) end
    data = table.concat(out)
  end
  return { opcode = b1 & 0x0f, fin = b1 & 0x80 ~= 0, masked = masked, payload = data,
    mask = key and string.char(table.unpack(key)) }, p + len
end

------------------------------------------------------------------------------------------------
-- Connections

local Conn = {}
Conn.__index = Conn

function Conn:raw(bytes) self.out[#self.out + 1] = bytes; self.server:flush(self) end
function Conn:frame(opcode, payload, opts) self:raw(M.frame(opcode, payload, opts)) end
function Conn:text(s, opts) self:frame(1, s, opts) end
function Conn:binary(s, opts) self:frame(2, s, opts) end
function Conn:ping(s) self:frame(9, s or "") end
function Conn:close_frame(code, reason)
  self:frame(8, code and (string.pack(">I2", code) .. (reason or "")) or "")
end

-- Answers the upgrade: 101 with the right accept unless opts say otherwise (status = a number,
-- accept = a string, headers = extra header lines, greet = send the greeting).
function Conn:accept(opts)
  opts = opts or {}
  local status = opts.status or 101
  local lines = { "HTTP/1.1 " .. status .. (status == 101 and " Switching Protocols" or " Other") }
  if status == 101 then
    lines[#lines + 1] = "Upgrade: websocket"
    lines[#lines + 1] = "Connection: Upgrade"
    local accept = opts.accept
    if accept == nil then accept = M.accept_of(self.request.headers["sec-websocket-key"] or "") end
    if accept ~= false then lines[#lines + 1] = "Sec-WebSocket-Accept: " .. accept end
  end
  for _, h in ipairs(opts.headers or {}) do lines[#lines + 1] = h end
  local body = opts.body or ""
  if status ~= 101 then lines[#lines + 1] = "Content-Length: " .. #body end
  self.upgraded = status == 101
  self:raw(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body .. (opts.after or ""))
  if opts.greet and status == 101 then self:text(M.GREETING) end
end

-- Ends the connection: gracefully (close) or, with hard = true, a hang-up with no TLS close
-- (shutdown of the TCP socket under TLS).
function Conn:hangup(hard)
  if self.gone then return end
  self.gone = true
  if hard and self.tcp then -- the TCP socket under TLS (luasec took its descriptor)
    self.tcp:setfd(self.sock:getfd())
    self.tcp:shutdown("both")
    self.tcp:setfd(-1)
  end
  self.sock:close()
end

-- the client's text frames as strings, in order
function Conn:texts()
  local t = {}
  for _, f in ipairs(self.frames) do if f.opcode == 1 then t[#t + 1] = f.payload end end
  return t
end

------------------------------------------------------------------------------------------------
-- The server

local Server = {}
Server.__index = Server

-- one self-signed certificate per process (openssl runs without a sanitizer preload)
local tls_ctx
local function tls_context()
  if tls_ctx then return tls_ctx end
  local dir = os.tmpname()
  os.remove(dir)
  local q = require("spec.helpers.raw").q
  assert(os.execute("mkdir " .. q(dir) .. " && env -u LD_PRELOAD openssl req -x509 -newkey ec"
    .. " -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " .. q(dir .. "/key.pem") .. " -out "
    .. q(dir .. "/cert.pem") .. " -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1"
    .. " >/dev/null 2>&1"), "openssl failed")
  tls_ctx = assert(require("ibkr.mock.net.tls").context(dir .. "/cert.pem", dir .. "/key.pem"))
  os.execute("rm -rf " .. q(dir))
  return tls_ctx
end

function M.new(opts)
  opts = opts or {}
  local l = assert(socket.bind("127.0.0.1", 0))
  l:settimeout(0)
  local _, port = l:getsockname()
  local srv = setmetatable({ listener = l, conns = {}, tls = opts.tls and tls_context() or nil,
    port = port }, Server)
  srv.url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. port .. "/v1/api"
  srv.ws_url = srv.url:gsub("^http", "ws") .. "/ws"
  srv.tickles = 0
  return srv
end

function Server.flush(_, conn)
  if conn.gone or not conn.ready then return end
  while #conn.out > 0 do
    local data = conn.out[1]
    local n, err, partial = conn.sock:send(data, conn.sent + 1)
    n = n or partial
    if n and n > conn.sent then conn.bytes_out, conn.sent = conn.bytes_out + n - conn.sent, n end
    if conn.sent >= #data then
      table.remove(conn.out, 1)
      conn.sent = 0
    elseif err == "closed" then
      conn.gone = true
      return
    else
      return -- the socket is full: later
    end
  end
end

-- an HTTP request (not an upgrade): POST /tickle is answered, anything else 404
local function answer_http(srv, conn, req)
  if srv.on_http and srv.on_http(conn, req) then return end
  if req.path:match("/tickle$") then
    srv.tickles = srv.tickles + 1
    local body = '{"session":"' .. M.SESSION .. '","iserver":{"authStatus":{"authenticated":true,'
      .. '"connected":true,"competing":false}}}'
    conn:raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " .. #body
      .. "\r\n\r\n" .. body)
  else
    conn:raw("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
  end
end

-- parses what arrived on conn: request heads, then (after an upgrade) frames (also what came
-- just before the connection ended)
local function consume(srv, conn)
  while true do
    if not conn.upgraded then
      local e = conn.buf:find("\r\n\r\n", 1, true)
      if not e then return end
      local head = conn.buf:sub(1, e + 1)
      local len = tonumber(head:lower():match("\ncontent%-length:%s*(%d+)")) or 0
      if #conn.buf < e + 3 + len then return end
      conn.buf = conn.buf:sub(e + 4 + len)
      local line = head:match("^[^\r\n]*")
      local req = { line = line, headers = {}, method = line:match("^(%S+)"),
        path = line:match("^%S+ (%S+)") }
      for name, value in head:gmatch("\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
        req.headers[name:lower()] = value
      end
      if (req.headers.upgrade or ""):lower() == "websocket" then
        conn.request = req
        srv.upgrades = (srv.upgrades or 0) + 1
        if srv.on_upgrade then srv.on_upgrade(conn, req) else conn:accept{ greet = true } end
      else
        answer_http(srv, conn, req)
      end
    else
      local f, nxt = parse_frame(conn.buf, 1)
      if not f then return end
      conn.buf = conn.buf:sub(nxt)
      conn.frames[#conn.frames + 1] = f
      if srv.on_frame then srv.on_frame(conn, f) end
      if f.opcode == 8 and not conn.closed_by_client then
        conn.closed_by_client = true
        if not srv.keep_after_close and not conn.gone then
          conn:frame(8, f.payload)
          conn:hangup()
          return
        end
      end
    end
  end
end

local function read(conn)
  while not conn.gone do
    local data, err, partial = conn.sock:receive(65536)
    data = data or partial
    if data and #data > 0 then conn.buf, conn.bytes_in = conn.buf .. data, conn.bytes_in + #data end
    if err and err ~= "timeout" and err ~= "wantread" and err ~= "wantwrite" then
      -- the peer is gone (closed, or a TLS error: luasec must never touch that session again,
      -- its next read would spin for ever inside C)
      conn.gone, conn.eof = true, true
      return
    end
    if not data or #data == 0 or err then return end
  end
end

-- accepts, shakes TLS hands, reads and answers what can be without waiting
function Server:step()
  while true do
    local c = self.listener:accept()
    if not c then break end
    c:settimeout(0)
    local conn = setmetatable({ server = self, sock = c, buf = "", out = {}, sent = 0, frames = {},
      bytes_in = 0, bytes_out = 0,
      ready = self.tls == nil, n = #self.conns + 1 }, Conn)
    if self.tls then
      conn.tcp, conn.sock = c, assert(require("ssl").wrap(c, self.tls))
      conn.sock:settimeout(0)
    end
    self.conns[#self.conns + 1] = conn
  end
  for _, conn in ipairs(self.conns) do
    if not conn.gone and not conn.ready then
      local ok, err = conn.sock:dohandshake()
      if ok then conn.ready = true
      elseif err ~= "wantread" and err ~= "wantwrite" then conn.gone = true end
    end
    if conn.ready and not conn.gone then
      self:flush(conn)
      if not conn.paused then read(conn) end
      consume(self, conn)
      self:flush(conn)
    elseif conn.ready and #conn.buf > 0 then
      consume(self, conn)
    end
  end
end

-- the sockets worth waiting on (luasocket's select takes objects with getfd)
function Server:sockets()
  local t = { self.listener }
  for _, conn in ipairs(self.conns) do if not conn.gone and not conn.paused then t[#t + 1] = conn.sock end end
  return t
end

function Server:close()
  for _, conn in ipairs(self.conns) do if not conn.gone then conn.gone = true; conn.sock:close() end end
  self.listener:close()
end

-- steps the server alone until done() (failing the spec after `secs` real seconds, default 10)
function Server:wait_for(done, secs)
  local limit = core.monotonic() + (secs or 10) * M.SCALE
  while not done() do
    assert(core.monotonic() < limit, "the server never saw what the spec waits for")
    self:step()
    if not done() then socket.select(self:sockets(), nil, 0.05) end
  end
end

-- the latest connection that asked for an upgrade
function Server:last()
  for i = #self.conns, 1, -1 do if self.conns[i].request then return self.conns[i] end end
end

------------------------------------------------------------------------------------------------
-- Driving a client coroutine and the server together

-- whether the client waits for another thread (the engine: a connect, a REST exchange), so real
-- time must pass: its pollable is a request, or its channel is connecting
local function busy(p, st)
  if type(p) == "userdata" then return true end
  local ws = st and rawget(st, "_ws")
  return ws ~= nil and ws:state() == "connecting"
end

-- whether everything either side of stream st's channel wrote has been read by the other (loopback
-- delivers a little after send() returns: the counters, not the descriptors, say when it is over)
local function in_sync(st, srv)
  local ws = st and rawget(st, "_ws")
  if ws == nil or ws:state() == "closed" or srv == nil then return true end
  local conn = srv:last()
  if conn == nil or conn.gone then return true end
  local info = ws:info()
  return info.received == conn.bytes_out and info.sent == conn.bytes_in and #conn.out == 0
end

-- Resumes coroutine `co` (a stream's, a keep-alive's) whenever it is due or its pollable is ready,
-- steps the server between resumes, and waits on both sides' descriptors. `ft` (optional) is the
-- fake clock of the client's session: when both sides are quiet (nothing to read on either, no
-- other thread at work for the client), it is moved to the client's next wake-up, so timers fire
-- without real waiting. Returns once done() is true; fails the spec after `secs` real seconds
-- (default 10). `st`: the stream whose channel is watched (default: the pollable co yields).
function M.drive(co, srv, ft, done, secs, st)
  local limit = core.monotonic() + (secs or 10) * M.SCALE
  local clock = ft and ft.clock or core.monotonic
  local wake, p = clock(), nil
  while not done() do
    assert(core.monotonic() < limit, "the spec's condition never came true")
    assert(coroutine.status(co) ~= "dead", "the coroutine ended")
    local fd = p and p:pollfd() or -1
    local ready = fd >= 0 and core.poll({ fd }, 0, { p:events() }) ~= nil
    if ready or clock() >= wake then
      local ok, w, p2 = coroutine.resume(co)
      assert(ok, w)
      if coroutine.status(co) == "dead" then return end
      wake, p = clock() + (type(w) == "number" and w or 0), p2
      fd = p and p:pollfd() or -1
    end
    if srv then srv:step() end
    if not done() and clock() < wake then
      local socks = srv and srv:sockets() or {}
      if fd >= 0 then
        socks[#socks + 1] = { getfd = function() return fd end, dirty = function() return false end }
      end
      local r = socket.select(socks, nil, 0)
      local stream = st or (type(p) == "table" and rawget(p, "_ws") ~= nil and p) or nil
      if #r == 0 then
        if ft and not busy(p, stream) and in_sync(stream, srv) then ft.t = wake
        else socket.select(socks, nil, ft and 0.01 or math.min(wake - clock(), 0.05)) end
      end
    end
  end
end

return M
