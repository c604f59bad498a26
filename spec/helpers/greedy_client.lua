-- A greedy client of the mock gateway for specs, run as a script:
--   lua5.4 spec/helpers/greedy_client.lua HOST PORT tls|plain pipeline|huge
-- "pipeline": keeps 1,000 pipelined POST /v1/api/tickle in flight on one connection, sending more
-- as the answers come (it reads them all, as fast as they come); "huge": asks for one answer (the
-- spec has given /tickle a "huge" fault) and reads it as fast as it comes. Never blocks: sends and
-- reads whatever the socket takes. Prints "greedy N" after every 1,000 answers (pipeline) or MiB
-- (huge); the first line says its wanting is under way. Runs until killed (or 120 s, a safety).
local socket = require("socket")

local host, port, tls, mode = arg[1], tonumber(arg[2]), arg[3] == "tls", arg[4]
local REQUEST = "POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
local WINDOW = 1000

local c = assert(socket.connect(host, port))
c:setoption("tcp-nodelay", true)
if tls then
  c = assert(require("ssl").wrap(c, { mode = "client", protocol = "any", verify = "none" }))
  c:settimeout(5)
  assert(c:dohandshake())
end
c:settimeout(0)

local out, sent_i = "", 1          -- bytes still to send, from index sent_i
local in_flight, answered, got_bytes = 0, 0, 0
local tail = ""                    -- the end of what came, to count heads split over two reads
local unit = mode == "huge" and 1024 * 1024 or 1000
local reported = 0
local give_up = socket.gettime() + 120

if mode == "huge" then
  out, in_flight = REQUEST, 1
end

while socket.gettime() < give_up do
  if mode == "pipeline" and in_flight < WINDOW and sent_i > #out then
    local n = WINDOW - in_flight
    out, sent_i, in_flight = REQUEST:rep(n), 1, WINDOW
  end
  local progress = false
  if sent_i <= #out then
    local last, err, partial = c:send(out, sent_i)
    local upto = last or partial or sent_i - 1
    if upto >= sent_i then
      sent_i, progress = upto + 1, true
    elseif err ~= "timeout" and err ~= "wantwrite" and err ~= "wantread" then
      error("send: " .. tostring(err))
    end
  end
  local data, err, partial = c:receive(65536)
  local got = data or partial
  if got and #got > 0 then
    progress = true
    got_bytes = got_bytes + #got
    if mode == "pipeline" then
      local s = tail .. got -- (a tail of 8 bytes cannot hold a whole "HTTP/1.1 ")
      local _, heads = s:gsub("HTTP/1%.1 ", "")
      answered, in_flight = answered + heads, in_flight - heads
      tail = s:sub(-8)
    end
  elseif err ~= "timeout" and err ~= "wantread" and err ~= "wantwrite" then
    error("receive: " .. tostring(err))
  end
  local amount = mode == "huge" and got_bytes or answered
  if amount // unit > reported then
    reported = amount // unit
    io.stdout:write("greedy ", reported, "\n")
    io.stdout:flush()
  end
  if not progress then
    socket.select({ c }, sent_i <= #out and { c } or nil, 0.05)
  end
end
