-- A small websocket client for specs of the mock gateway's /v1/api/ws (luasocket/luasec, blocking
-- with timeouts). Its framing is written here, apart from the mock's (ibkr.mock.net.ws), so that
-- the two sides check each other; masking keys come from OpenSSL's random generator.
local cjson = require("cjson")
local mime = require("mime")
local digest = require("openssl.digest")
local rand = require("openssl.rand")
local socket = require("socket")
local mock = require("spec.helpers.mock")

local M = {}

M.GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
M.OP = { continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10 }

function M.accept_for(key)
  return (mime.b64(digest.new("sha1"):final(key .. M.GUID)))
end

-- The cookie the gateway wants: api={"session":"<id>"}
function M.cookie(session)
  return 'api={"session":"' .. session .. '"}'
end

-- A client frame: masked with a fresh random key unless opts.mask == false; opts.fin (true),
-- opts.rsv (bits 0x70), opts.length (the length to claim, for hostile frames).
function M.frame(opcode, payload, opts)
  opts = opts or {}
  local n = opts.length or #payload
  local b1 = (opts.fin == false and 0 or 0x80) | (opts.rsv or 0) | opcode
  local mask = opts.mask == false and 0 or 0x80
  local head
  if n < 126 then
    head = string.pack("BB", b1, mask | n)
  elseif n < 65536 then
    head = string.pack(">BBI2", b1, mask | 126, n)
  else
    head = string.pack(">BBI8", b1, mask | 127, n)
  end
  if mask == 0 then
    return head .. payload
  end
  local key = rand.bytes(4)
  local out = {}
  for i = 1, #payload do
    out[i] = string.char(payload:byte(i) ~ key:byte((i - 1) % 4 + 1))
  end
  return head .. key .. table.concat(out)
end

local Client = {}
Client.__index = Client

-- Opens a websocket on mock gw. opts: cookie (a Cookie header value; default the gateway's api
-- cookie for the mock's current session; false: none), session (use this id in the cookie),
-- path ("/v1/api/ws"), query, headers (list of {name, value} replacing the handshake's own when
-- given), timeout (5). Returns a client, or nil, an error and the refused HTTP response.
function M.connect(gw, opts)
  opts = opts or {}
  local c, err = gw:connect({ timeout = opts.timeout or 5 })
  if not c then
    return nil, err
  end
  local key = mime.b64(rand.bytes(16))
  local headers = opts.headers or {
    { "Upgrade", "websocket" }, { "Connection", "Upgrade" }, { "Sec-WebSocket-Key", key },
    { "Sec-WebSocket-Version", "13" },
  }
  local cookie = opts.cookie
  if cookie == nil then
    cookie = M.cookie(opts.session or gw:state().session)
  end
  if cookie then
    headers[#headers + 1] = { "Cookie", cookie }
  end
  local target = (opts.path or "/v1/api/ws") .. (opts.query and ("?" .. opts.query) or "")
  assert(c:send(mock.format_request(opts.method or "GET", target, { headers = headers },
    gw.host .. ":" .. gw.port)))
  local resp, rerr = c:read_response({ keep_1xx = true })
  if not resp then
    c:close()
    return nil, rerr
  end
  if resp.status ~= 101 then
    c:close()
    return nil, "refused with " .. resp.status, resp
  end
  assert(resp.headers["sec-websocket-accept"] == M.accept_for(key), "wrong Sec-WebSocket-Accept")
  return setmetatable({ c = c, sock = c.sock, buf = "", response = resp, timeout = opts.timeout or 5 },
    Client)
end

function Client:send_raw(bytes)
  self.sock:settimeout(self.timeout)
  return self.sock:send(bytes)
end

function Client:send_frame(opcode, payload, opts)
  return self:send_raw(M.frame(opcode, payload, opts))
end

function Client:send_text(s)
  return self:send_frame(M.OP.text, s)
end

-- Reads exactly n bytes before deadline (socket.gettime()). Returns them or nil, "timeout"|"closed".
function Client:read_bytes(n, deadline)
  while #self.buf < n do
    local left = deadline - socket.gettime()
    if left <= 0 then
      return nil, "timeout"
    end
    self.sock:settimeout(left)
    local data, err, partial = self.sock:receive(n - #self.buf)
    self.buf = self.buf .. (data or partial or "")
    if not data and err ~= "timeout" and err ~= "wantread" then
      if #self.buf < n then
        return nil, err
      end
    end
  end
  local out = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return out
end

-- Reads one server frame: {opcode, fin, payload, masked}, or nil, "timeout" | "closed" | error.
function Client:read_frame(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  local h, err = self:read_bytes(2, deadline)
  if not h then
    return nil, err
  end
  local b1, b2 = h:byte(1, 2)
  local len = b2 & 0x7F
  if len == 126 then
    len = string.unpack(">I2", assert(self:read_bytes(2, deadline)))
  elseif len == 127 then
    len = string.unpack(">I8", assert(self:read_bytes(8, deadline)))
  end
  assert(b2 & 0x80 == 0, "a server frame is masked")
  local payload = len > 0 and assert(self:read_bytes(len, deadline)) or ""
  return { opcode = b1 & 0x0F, fin = b1 & 0x80 ~= 0, rsv = b1 & 0x70, payload = payload }
end

-- Reads the next message, answering pings: "text"|"binary", data; "close", code, reason; or
-- nil, "timeout"|"closed" (EOF without a close frame).
function Client:read_message(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  local parts, opcode = {}, nil
  while true do
    local f, err = self:read_frame(math.max(0, deadline - socket.gettime()))
    if not f then
      return nil, err
    end
    if f.opcode == M.OP.close then
      local code = #f.payload >= 2 and string.unpack(">I2", f.payload) or nil
      self.got_close = true
      return "close", code, f.payload:sub(3)
    elseif f.opcode == M.OP.ping then
      self.pings = (self.pings or 0) + 1
      self.last_ping = f.payload
      self:send_frame(M.OP.pong, f.payload)
    elseif f.opcode ~= M.OP.pong then
      opcode = opcode or f.opcode
      parts[#parts + 1] = f.payload
      if f.fin then
        return opcode == M.OP.text and "text" or "binary", table.concat(parts)
      end
    end
  end
end

-- The next message decoded (JSON text as a table, other text as {text = ...}); close as
-- {close = code, reason = ...}; nil, err on timeout or EOF.
function Client:next(timeout)
  local kind, a, b = self:read_message(timeout)
  if not kind then
    return nil, a
  end
  if kind == "close" then
    return { close = a or false, reason = b }
  end
  local ok, v = pcall(cjson.decode, a)
  if ok and type(v) == "table" then
    return v
  end
  return { text = a }
end

local function is_heartbeat(m)
  return m.topic == "system" and m.hb ~= nil
end
M.is_heartbeat = is_heartbeat

-- Reads until pred(message) is true (heartbeats are skipped unless opts.heartbeats). Returns that
-- message and the list of the others read before it; fails the spec after timeout seconds.
function Client:until_(pred, timeout, opts)
  local deadline = socket.gettime() + (timeout or self.timeout)
  local before = {}
  while true do
    local m, err = self:next(math.max(0.001, deadline - socket.gettime()))
    assert(m, "no such message (" .. tostring(err) .. "); got: " .. cjson.encode(before))
    if pred(m) then
      return m, before
    end
    if not is_heartbeat(m) or (opts and opts.heartbeats) then
      before[#before + 1] = m
    end
  end
end

-- Reads the greeting: system, act, sts (heartbeats skipped). Returns them.
function Client:greeting(timeout)
  local sys, before = self:until_(function(m) return m.topic == "system" and m.success ~= nil end, timeout)
  assert(#before == 0, "messages before the greeting: " .. cjson.encode(before))
  local act = self:until_(function() return true end, timeout)
  local sts = self:until_(function() return true end, timeout)
  return sys, act, sts
end

-- Has the mock push a marker text, then reads up to it. Returns the messages before it
-- (heartbeats skipped): what the mock sent between two points.
function Client:drain(gw, timeout)
  local marker = "marker-" .. tostring(math.random(1e9))
  gw:ws_push(marker)
  local _, before = self:until_(function(m) return m.text == marker end, timeout)
  return before
end

-- Sends a close frame and reads up to the mock's. Returns its code and reason.
function Client:close(code, reason)
  local payload = code and (string.pack(">I2", code) .. (reason or "")) or ""
  self:send_frame(M.OP.close, payload)
  while true do
    local kind, a, b = self:read_message()
    if kind == "close" then
      self.sock:close()
      return a, b
    end
    if not kind then
      self.sock:close()
      return nil, a
    end
  end
end

-- True when the mock ends the connection within timeout (after any close frame), and how:
-- "closed", or over TLS "unexpected eof while reading" when it cut TCP without a close_notify.
function Client:eof(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  while true do
    local data, err = self:read_bytes(1, deadline)
    if not data then
      return err ~= "timeout", err
    end
  end
end

function Client:shutdown()
  self.sock:close()
end

return M
