-- A fake HTTP proxy for specs, run as a script: lua5.4 spec/helpers/fake_proxy.lua
-- Listens on 127.0.0.1 (ephemeral port), prints "PORT" as its first line, then for every request
-- prints its request line ("POST http://host:port/path HTTP/1.1") and answers 200 with a ready
-- brokerage status, closing the connection. Ends after 60 s without a connection (or a signal).
local socket = require("socket")

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
io.stdout:write(port, "\n")
io.stdout:flush()
server:settimeout(60)

local BODY = '{"authenticated":true,"connected":true,"competing":false,"established":true,"message":""}'

while true do
  local c = server:accept()
  if not c then break end
  c:settimeout(5)
  local line = c:receive("*l")
  while true do -- the rest of the head
    local h = c:receive("*l")
    if not h or h == "" then break end
  end
  if line then
    io.stdout:write(line, "\n")
    io.stdout:flush()
    c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " .. #BODY
      .. "\r\nConnection: close\r\n\r\n" .. BODY)
  end
  c:close()
end
