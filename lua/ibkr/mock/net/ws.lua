-- RFC 6455 websockets, server side, for the mock gateway: the opening handshake, frames, and a
-- connection that runs inside a connection coroutine of ibkr.mock.net.server (a response with
-- `upgrade`). Nothing about the gateway here: ibkr.mock.push speaks the gateway's messages.
--
-- A connection reads at most READ_MAX bytes and handles at most MAX_FRAMES frames per turn, then
-- lets the loop serve others; its outgoing queue is bounded (max_queue: a peer that does not read
-- is dropped, not buffered without end); a frame or message over max_message is refused with
-- close 1009 from its header on, before its payload is read.
local digest = require("openssl.digest")
local mime = require("mime")

local ws = {}

ws.GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ws.OP = { continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10 }
local OP = ws.OP
local KNOWN_OP = { [0] = true, [1] = true, [2] = true, [8] = true, [9] = true, [10] = true }

local READ_MAX = 65536
local MAX_FRAMES = 256
local MAX_IDLE_WAKEUPS = 1000

---------------------------------------------------------------------------------------------
-- The opening handshake (RFC 6455 section 4.2)

function ws.accept_key(key)
  return (mime.b64(digest.new("sha1"):final(key .. ws.GUID)))
end

-- Whether a comma-separated header value holds token (case-insensitive).
local function has_token(value, token)
  for item in (value or ""):gmatch("[^,]+") do
    if item:match("^%s*(.-)%s*$"):lower() == token then
      return true
    end
  end
  return false
end

-- A key is 16 random bytes in base64: 22 characters and "==".
local function valid_key(key)
  if not key or not key:find("^[%w+/]+==$") or #key ~= 24 then
    return false
  end
  local raw = mime.unb64(key)
  return raw ~= nil and #raw == 16
end

-- Checks an opening handshake (a parsed request). Returns true, or nil, HTTP status, message and
-- extra response headers (a list of {name, value}).
function ws.check_handshake(req)
  local h = req.headers
  if req.method ~= "GET" then
    return nil, 405, "a websocket handshake is a GET", { { "Allow", "GET" } }
  end
  if not has_token(h.upgrade, "websocket") then
    return nil, 426, "websocket upgrade required",
      { { "Upgrade", "websocket" }, { "Sec-WebSocket-Version", "13" } }
  end
  if req.minor < 1 then
    return nil, 400, "a websocket handshake needs HTTP/1.1"
  end
  if not h.host then
    return nil, 400, "missing Host header"
  end
  if not has_token(h.connection, "upgrade") then
    return nil, 400, "Connection header must include Upgrade"
  end
  if h["sec-websocket-version"] ~= "13" then
    return nil, 426, "unsupported Sec-WebSocket-Version (13 expected)", { { "Sec-WebSocket-Version", "13" } }
  end
  if not valid_key(h["sec-websocket-key"]) then
    return nil, 400, "missing or malformed Sec-WebSocket-Key"
  end
  return true
end

-- The 101 answer to a checked handshake. The server writes it, then runs ws.serve(port, handler,
-- opts) on the connection (see ws.serve for handler and opts).
function ws.upgrade(req, handler, opts)
  return {
    status = 101,
    headers = {
      { "Upgrade", "websocket" },
      { "Connection", "Upgrade" },
      { "Sec-WebSocket-Accept", ws.accept_key(req.headers["sec-websocket-key"]) },
    },
    no_length = true,
    upgrade = function(port)
      return ws.serve(port, handler, opts)
    end,
  }
end

---------------------------------------------------------------------------------------------
-- Frames (RFC 6455 section 5)

-- A server frame (never masked). fin defaults to true.
function ws.frame(opcode, payload, fin)
  local n = #payload
  local b1 = (fin == false and 0 or 0x80) | opcode
  local head
  if n < 126 then
    head = string.pack("BB", b1, n)
  elseif n < 65536 then
    head = string.pack(">BBI2", b1, 126, n)
  else
    head = string.pack(">BBI8", b1, 127, n)
  end
  return head .. payload
end

-- XORs data with the 4-byte masking key, 8 bytes at a time.
function ws.unmask(data, key)
  local m = string.unpack("<I4", key)
  local m8 = m | (m << 32)
  local n = #data
  local out, k, i = {}, 0, 1
  local pack, unpack = string.pack, string.unpack
  while i + 7 <= n do
    k = k + 1
    out[k] = pack("<i8", unpack("<i8", data, i) ~ m8)
    i = i + 8
  end
  local kb = { key:byte(1, 4) }
  for j = i, n do
    k = k + 1
    out[k] = string.char(data:byte(j) ~ kb[(j - 1) % 4 + 1])
  end
  return table.concat(out)
end

-- Reads the payload length at buf[i...]. Returns length, next index; nil when more bytes are
-- needed; false, code, reason when the length is not allowed.
local function payload_length(buf, i, len7)
  if len7 < 126 then
    return len7, i
  end
  local size = len7 == 126 and 2 or 8
  if #buf < i + size - 1 then
    return nil
  end
  local len = string.unpack(size == 2 and ">I2" or ">i8", buf, i)
  if len < 0 then
    return false, 1002, "payload length with the most significant bit set"
  end
  if (size == 2 and len < 126) or (size == 8 and len < 65536) then
    return false, 1002, "payload length not in its shortest form"
  end
  return len, i + size
end

-- Parses the client frame starting at buf[pos]. Returns a frame {fin, opcode, payload} and the
-- index after it; nil when more bytes are needed; or false, close code, reason (a frame that is
-- not allowed: 1002, or 1009 for a payload over max_payload, refused from its header on).
function ws.parse_frame(buf, pos, max_payload)
  if #buf < pos + 1 then
    return nil
  end
  local b1, b2 = buf:byte(pos, pos + 1)
  local fin, opcode = b1 & 0x80 ~= 0, b1 & 0x0F
  if b1 & 0x70 ~= 0 then
    return false, 1002, "reserved bits set (no extension was agreed)"
  end
  if not KNOWN_OP[opcode] then
    return false, 1002, "unknown opcode " .. opcode
  end
  if b2 & 0x80 == 0 then
    return false, 1002, "client frames must be masked"
  end
  if opcode >= 8 and (not fin or b2 & 0x7F > 125) then
    return false, 1002, "control frames must be whole and at most 125 bytes"
  end
  local len, i, reason = payload_length(buf, pos + 2, b2 & 0x7F)
  if not len then
    return len, i, reason
  end
  if len > max_payload then
    return false, 1009, "frame over " .. max_payload .. " bytes"
  end
  if #buf < i + 3 + len then
    return nil
  end
  local payload = ws.unmask(buf:sub(i + 4, i + 3 + len), buf:sub(i, i + 3))
  return { fin = fin, opcode = opcode, payload = payload }, i + 4 + len
end

-- Codes an endpoint may send in a close frame (RFC 6455 7.4; 1012-1014 registered with IANA).
function ws.valid_close_code(code)
  return math.type(code) == "integer" and ((code >= 1000 and code <= 1014 and code ~= 1004 and code ~= 1005
    and code ~= 1006) or (code >= 3000 and code <= 4999))
end

function ws.close_payload(code, reason)
  if not code then
    return ""
  end
  return string.pack(">I2", code) .. (reason or ""):sub(1, 123)
end

-- Parses a close frame's payload. Returns code (nil when none), reason; or false, 1002|1007, why.
function ws.parse_close(payload)
  if #payload == 0 then
    return nil, ""
  end
  if #payload == 1 then
    return false, 1002, "a close payload of one byte"
  end
  local code = string.unpack(">I2", payload)
  if not ws.valid_close_code(code) then
    return false, 1002, "close code " .. code .. " is not allowed"
  end
  local reason = payload:sub(3)
  if not utf8.len(reason) then
    return false, 1007, "close reason is not UTF-8"
  end
  return code, reason
end

---------------------------------------------------------------------------------------------
-- A connection

local Conn = {}
Conn.__index = Conn

-- Ends the connection: once, with the handler told how (see ws.serve).
function Conn:finish(how, code, reason)
  if self.state == "closed" then
    return
  end
  self.state = "closed"
  self.out, self.out_i, self.queued = {}, 1, 0
  self.handler.closed(self, code, reason or "", how)
  self.port.close(how ~= "peer" and how ~= "server" and how ~= "failed")
end

-- Queues bytes as they are (Conn:send frames them; raw bytes serve hostile tests). Returns true,
-- or false when the connection is closing or closed, or when the queue would pass max_queue: then
-- the peer, which does not read, is dropped at once.
function Conn:raw(bytes)
  if self.state ~= "open" then
    return false
  end
  if self.queued + #bytes > self.max_queue then
    self:finish("overflow", 1006, "outgoing queue over " .. self.max_queue .. " bytes")
    return false
  end
  self:enqueue(bytes)
  return true
end

-- Queues a frame; returns as Conn:raw.
function Conn:send(opcode, payload, fin)
  return self:raw(ws.frame(opcode, payload, fin))
end

function Conn:enqueue(bytes)
  if self.queued == 0 then
    self.stall_since = self.port.clock()
  end
  self.out[#self.out + 1] = bytes
  self.queued = self.queued + #bytes
  self.port.wake()
end

function Conn:text(s)
  return self:send(OP.text, s)
end

-- Starts the closing handshake: a close frame, then the peer's close is awaited (close_timeout).
function Conn:close(code, reason)
  if self.state ~= "open" then
    return false
  end
  self:enqueue(ws.frame(OP.close, ws.close_payload(code, reason)))
  self.state = "closing"
  self.close_code, self.close_reason = code, reason
  self.close_deadline = self.port.clock() + self.close_timeout
  return true
end

-- Ends the connection at once, without a close frame (for TLS, without close_notify either).
function Conn:drop()
  self:finish("dropped", 1006, "dropped")
end

-- Stops (true) or resumes (false) all reading, writing and timers of the connection.
function Conn:freeze(frozen)
  self.frozen = frozen and true or false
  self.port.wake()
end

-- Our last frame is queued: flush it, then close the TCP connection (plain TCP: half-close and
-- read to the peer's end first, so that our close frame is not lost to a reset). how, code and
-- reason are what the handler is told.
function Conn:last_word(frame, how, code, reason)
  self:enqueue(frame)
  self.state, self.discard = "done", true
  self.end_how, self.end_code, self.end_reason = how, code, reason
  self.close_deadline = self.port.clock() + self.close_timeout
end

-- A close frame from the peer: echoed (the closing handshake), or the answer to ours.
function Conn:on_close_frame(payload)
  local code, reason, why = ws.parse_close(payload)
  if code == false then
    return self:fail(reason, why)
  end
  if self.state == "closing" then
    return self:finish("server", self.close_code, self.close_reason)
  end
  self:last_word(ws.frame(OP.close, ws.close_payload(code, reason)), "peer", code, reason)
end

-- A protocol violation (1002, 1007, 1009, ...): counted by the handler, then our close frame and
-- the end of the connection (RFC 6455 7.1.7: no closing handshake is awaited).
function Conn:fail(code, reason)
  if self.handler.protocol_error then
    self.handler.protocol_error(self, code, reason)
  end
  if self.state == "open" then
    self:last_word(ws.frame(OP.close, ws.close_payload(code, reason)), "failed", code, reason)
  elseif self.state ~= "closed" then
    self:finish("error", code, reason)
  end
end

-- A whole message (text checked for UTF-8).
function Conn:on_message(opcode, data)
  if opcode == OP.text and not utf8.len(data) then
    return self:fail(1007, "text message is not UTF-8")
  end
  self.handler.message(self, opcode == OP.text and "text" or "binary", data)
end

-- A data frame (text, binary or continuation), with fragments joined up to max_message.
function Conn:on_data(f)
  if self.state ~= "open" then
    return -- after our close frame the peer's data is ignored
  end
  local frag = self.frag
  if f.opcode == OP.continuation then
    if not frag then
      return self:fail(1002, "continuation frame without a message")
    end
    frag.size = frag.size + #f.payload
    if frag.size > self.max_message then
      return self:fail(1009, "message over " .. self.max_message .. " bytes")
    end
    frag.parts[#frag.parts + 1] = f.payload
    if f.fin then
      self.frag = nil
      self:on_message(frag.opcode, table.concat(frag.parts))
    end
  elseif frag then
    self:fail(1002, "new message inside a fragmented one")
  elseif f.fin then
    self:on_message(f.opcode, f.payload)
  else
    self.frag = { opcode = f.opcode, parts = { f.payload }, size = #f.payload }
  end
end

function Conn:on_frame(f)
  if f.opcode == OP.close then
    return self:on_close_frame(f.payload)
  elseif f.opcode == OP.ping then
    if self.state == "open" then
      self:send(OP.pong, f.payload)
    end
  elseif f.opcode == OP.pong then
    if self.handler.pong then
      self.handler.pong(self, f.payload)
    end
  else
    self:on_data(f)
  end
end

-- Handles the complete frames in the buffer, at most MAX_FRAMES. Returns true when more wait.
-- After a frame that could not be parsed the framing is lost: what follows is discarded.
function Conn:process()
  if self.discard then
    self.buf = ""
    return false
  end
  local pos, n = 1, 0
  while self.state ~= "closed" and self.state ~= "done" do
    if n >= MAX_FRAMES then
      break
    end
    local f, nxt, reason = ws.parse_frame(self.buf, pos, self.max_message)
    if f == nil then
      break
    elseif f == false then
      self.buf, pos, self.discard = "", 1, true
      self:fail(nxt, reason)
      break
    end
    pos, n = nxt, n + 1
    self:on_frame(f)
  end
  self.buf = self.buf:sub(pos)
  return n >= MAX_FRAMES
end

-- Reads what is there (at most READ_MAX bytes). Returns true when there may be more.
function Conn:read()
  if self.eof then
    return false
  end
  local data, err, partial = self.port.sock:receive(READ_MAX)
  local got = data or partial
  if got and #got > 0 then
    self.buf = self.buf .. got
    self.idle_wakeups = 0
  end
  if err and err ~= "timeout" and err ~= "wantread" and err ~= "wantwrite" then
    self.eof = err
    if self.port.tls or err ~= "closed" then
      self.broken = true -- see ibkr.mock.net.server: never write to a failed TLS session
    end
  end
  return data ~= nil
end

-- Writes what the socket takes. Returns nil when all is written, or the kind of wait needed.
function Conn:flush()
  local sock = self.port.sock
  while self.out_i <= #self.out do
    if self.broken then
      return nil
    end
    local f = self.out[self.out_i]
    local last, err, partial = sock:send(f, self.out_pos)
    local upto = last or partial or self.out_pos - 1
    if upto >= self.out_pos then
      self.queued = self.queued - (upto - self.out_pos + 1)
      self.stall_since = self.port.clock()
      self.idle_wakeups = 0
    end
    if last then
      self.out[self.out_i] = nil
      self.out_i, self.out_pos = self.out_i + 1, 1
    else
      self.out_pos = upto + 1
      if err == "timeout" or err == "wantwrite" then
        return "write"
      elseif err == "wantread" then
        return "read"
      end
      self.broken = true
      return nil
    end
  end
  self.out, self.out_i, self.out_pos = {}, 1, 1
  return nil
end

local function earliest(a, b)
  if not a then
    return b
  end
  if not b then
    return a
  end
  return math.min(a, b)
end

-- After reading, handling and writing: whether the connection ends now (and how).
function Conn:ending(now)
  if self.broken then
    -- the peer's close frame came with the end of the connection (a TLS peer that hangs up at
    -- once: the read that saw the frame also failed): its close, though our echo is lost
    if self.state == "done" and self.end_how == "peer" then
      return self.end_how, self.end_code, self.end_reason
    elseif self.state == "closing" and self.eof then
      return "server", self.close_code, self.close_reason
    end
    return "error", 1006
  end
  if self.state == "done" then
    if self.queued == 0 and not self.eof and not self.port.tls and now < self.close_deadline then
      if not self.half_closed then
        self.half_closed = true
        self.port.sock:shutdown("send")
      end
      return nil -- reading (and discarding) up to the peer's end
    end
    if self.queued == 0 or self.eof or now >= self.close_deadline then
      return self.end_how, self.end_code, self.end_reason
    end
    return nil
  end
  if self.state == "closing" and (self.eof or now >= self.close_deadline) then
    return "server", self.close_code, self.close_reason
  end
  if self.eof then
    return "eof", 1006, "connection closed without a close frame"
  end
  if self.queued > 0 and now - self.stall_since >= self.write_timeout then
    return "stalled", 1006, "the peer read nothing for " .. self.write_timeout .. " s"
  end
end

-- One turn: read, handle, run the timers, write. Returns the wait (kind, deadline) for the loop.
function Conn:turn()
  if self.frozen then
    return "sleep", nil
  end
  local more = self:read()
  more = self:process() or more
  local now = self.port.clock()
  local deadline
  if self.state == "open" then
    deadline = self.handler.timer(self, now)
  end
  local kind = self.state ~= "closed" and self:flush()
  local how, code, reason = self:ending(now)
  if how then
    self:finish(how, code, reason)
  end
  if self.state == "closed" then
    return nil
  end
  deadline = earliest(deadline, self.close_deadline)
  if self.queued > 0 then
    deadline = earliest(deadline, self.stall_since + self.write_timeout)
  end
  if kind then
    return kind, deadline
  end
  if more then
    return "sleep", now
  end
  return "read", deadline
end

-- Runs a websocket connection until it ends. port (from the server): sock, tls, buf (bytes read
-- after the handshake), clock(), wait(kind, deadline), wake(), close(abrupt), stopping(),
-- write_timeout. handler: open(c), message(c, "text"|"binary", data), timer(c, now) -> next
-- deadline or nil, closed(c, code, reason, how), and optionally pong(c, payload) and
-- protocol_error(c, code, reason). how: "peer" (the peer closed), "server" (we closed and the
-- peer answered, or did not in close_timeout), "failed" (a protocol violation: our close frame
-- with its code, then the end), "eof" (TCP closed without a close frame), "error" (a socket
-- error), "overflow" (max_queue), "stalled" (nothing written for write_timeout), "dropped"
-- (c:drop()), "stopped" (the server stopped).
-- opts: max_message (bytes), max_queue (bytes), close_timeout (seconds).
function ws.serve(port, handler, opts)
  local c = setmetatable({
    port = port, handler = handler, buf = port.buf or "", out = {}, out_i = 1, out_pos = 1,
    queued = 0, state = "open", idle_wakeups = 0,
    max_message = opts.max_message or 65536, max_queue = opts.max_queue or 1048576,
    close_timeout = opts.close_timeout or 2, write_timeout = port.write_timeout or 30,
  }, Conn)
  handler.open(c)
  while c.state ~= "closed" do
    if port.stopping() then
      c:finish("stopped", 1001, "server stopping")
      break
    end
    local kind, deadline = c:turn()
    if not kind then
      break
    end
    if port.wait(kind, deadline) == "ready" then
      c.idle_wakeups = c.idle_wakeups + 1
      if c.idle_wakeups > MAX_IDLE_WAKEUPS then -- ready again and again, no progress: dead TLS peer
        c:finish("error", 1006, "stalled")
      end
    end
  end
end

return ws
