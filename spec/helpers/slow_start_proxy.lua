-- A TCP relay for specs whose new connections are slow to reach the server, as the first request
-- of a connection is on a real network (the connect, the TLS handshake): run as a script,
--   lua5.4 spec/helpers/slow_start_proxy.lua TARGET_PORT DELAY
-- it listens on 127.0.0.1 (ephemeral port), prints "PORT" as its first line, and relays every
-- connection to 127.0.0.1:TARGET_PORT, holding the first bytes a client sends on each connection
-- DELAY seconds before passing them on (the rest flows at once). Ends after 60 s without traffic,
-- or on a signal.
local socket = require("socket")

local target, delay = tonumber(arg[1]), tonumber(arg[2])
assert(target and delay, "usage: slow_start_proxy.lua TARGET_PORT DELAY")

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
io.stdout:write(port, "\n")
io.stdout:flush()

local peer = {}      -- socket -> the other end of its relay
local held = {}      -- client socket -> { at = when its first bytes go on, data = them }
local fresh = {}     -- client socket -> true until its first bytes arrived

local function drop(c)
  local o = peer[c]
  for _, x in ipairs{ c, o } do
    if x then x:close(); peer[x], held[x], fresh[x] = nil, nil, nil end
  end
end

local function readers()
  local r = { server }
  for c in pairs(peer) do if not held[c] then r[#r + 1] = c end end
  return r
end

local quiet_since = socket.gettime()
while socket.gettime() - quiet_since < 60 do
  local now, wait = socket.gettime(), 1
  for c, h in pairs(held) do
    if h.at <= now then
      held[c] = nil
      if peer[c] then peer[c]:send(h.data) end
    else
      wait = math.min(wait, h.at - now)
    end
  end
  local ready = socket.select(readers(), nil, wait)
  for _, s in ipairs(ready) do
    quiet_since = socket.gettime()
    if s == server then
      local c = server:accept()
      local up = c and socket.connect("127.0.0.1", target)
      if up then
        c:settimeout(0)
        up:settimeout(0)
        peer[c], peer[up], fresh[c] = up, c, true
      elseif c then
        c:close()
      end
    elseif peer[s] then
      local data, err, part = s:receive(65536)
      data = data or part
      if data and #data > 0 then
        if fresh[s] then
          fresh[s] = nil
          held[s] = { at = socket.gettime() + delay, data = data }
        else
          peer[s]:settimeout(5)
          peer[s]:send(data)
          peer[s]:settimeout(0)
        end
      end
      if err == "closed" then drop(s) end
    end
  end
end
