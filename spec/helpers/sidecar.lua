-- ibkr-session keepalive as a sidecar, for the specs: started with --json and --listen 0 against a
-- mock gateway, its lines read as events; plain HTTP requests to its endpoint.
--   local sc = sidecar.start(gw, { "--on-change", "..." })  -- waits for "listening" and the first state
--   sc.port, sc:event(name [, pred]) -> the next JSON line of that event (others are kept in sc.seen)
--   sidecar.get(port, path [, method [, extra head]]) -> status, headers (lower-case), body
local cjson = require("cjson")
local socket = require("socket")
local cli = require("spec.helpers.cli")

local M = {}

local Sidecar = {}
Sidecar.__index = Sidecar

-- The next line whose event is `name` (and for which pred(doc) is true); raises at the end of
-- the output.
function Sidecar:event(name, pred)
  while true do
    local line = self.p:line()
    assert(line, "ibkr-session ended before the event " .. name .. "; seen: "
      .. table.concat(self.lines, "\n"))
    self.lines[#self.lines + 1] = line
    local doc = cjson.decode(line)
    self.seen[#self.seen + 1] = doc
    if doc.event == name and (not pred or pred(doc)) then return doc end
  end
end

-- Ends it (SIGTERM, or sig) and reads the rest of its output: how, code, stderr. Idempotent, so
-- specs may call it from finally() too.
function Sidecar:stop(sig)
  if self.ended then return table.unpack(self.ended) end
  self.p:kill(sig or "TERM")
  local how, code, rest, err = self.p:finish()
  for line in rest:gmatch("[^\n]+") do
    self.lines[#self.lines + 1] = line
    self.seen[#self.seen + 1] = cjson.decode(line)
  end
  self.ended = { how, code, err }
  return how, code, err
end

-- start(gw, extra args [, env]) -> sidecar, once it listens and said the first state. Inside a
-- busted test it is stopped when the test ends, whatever happens (finally).
function M.start(gw, extra, env)
  -- (--duration: a spec waiting for an event that never comes fails instead of hanging)
  local args = { "--url", gw.url, "--json", "keepalive", "--interval", "1", "--listen", "0",
    "--duration", "90" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local sc = setmetatable({ p = cli.spawn(args, env), lines = {}, seen = {} }, Sidecar)
  sc.pid = sc.p.pid
  if finally then finally(function() sc:stop("KILL") end) end -- luacheck: ignore finally
  local l = sc:event("listening")
  sc.port, sc.url = math.tointeger(l.port), l.url -- (cjson decodes numbers as floats)
  sc.first = sc:event("state")
  return sc
end

-- One request on a new connection; returns status, headers, body.
function M.get(port, path, method, extra, host)
  local c = assert(socket.tcp())
  c:settimeout(10)
  assert(c:connect(host or "127.0.0.1", port))
  assert(c:send((method or "GET") .. " " .. path .. " HTTP/1.1\r\nHost: spec\r\nConnection: close\r\n"
    .. (extra or "") .. "\r\n"))
  local raw = assert(c:receive("*a"))
  c:close()
  local head, body = raw:match("^(.-)\r\n\r\n(.*)$")
  local status = tonumber(head:match("^HTTP/1%.1 (%d+)"))
  local h = {}
  for k, v in head:gmatch("\r\n([^:]+): ([^\r]*)") do h[k:lower()] = v end
  return status, h, body
end

return M
