-- Hostile clients of an HTTP endpoint (ibkr-session keepalive --listen), for its specs and for
-- bench/sidecar.lua. Run as a process of its own, so that it never shares a loop with what it
-- attacks:
--   lua5.4 -e 'require("spec.helpers.hostile").run(KIND, HOST, PORT [, SECONDS])'
-- (M.command(kind, host, port [, seconds]) is that command line, run from the checkout's root)
-- It prints "ready" once its connections are in place (specs wait for that line), keeps attacking
-- for SECONDS (default: until killed), then prints "done key=value ..." (its counts).
-- KINDS: idle, slowloris, bigheader, halfopen, malformed, pipeline, noread, scrapes, beyond.
local socket = require("socket")

local M = {}

local GET = "GET /metrics HTTP/1.1\r\nHost: hostile\r\n\r\n"

local function connect(host, port)
  local c = socket.tcp()
  c:settimeout(2)
  local ok = c:connect(host, port)
  if not ok then
    c:close()
    return nil
  end
  c:settimeout(0)
  return c
end

-- Whether the server has closed c (reads and drops what is there).
local function gone(c)
  local _, err, partial = c:receive(65536)
  return err == "closed" or (err ~= "timeout" and err ~= nil) , partial
end

-- Sends as much of s from i as the socket takes now; returns the next index, or nil when closed.
local function push(c, s, i)
  local n, err, last = c:send(s, i)
  if n then return n + 1 end
  if err == "timeout" then return last + 1 end
  return nil
end

-- A pool of n connections, each with a state table; `open(st)` runs on each new connection,
-- `tick(st, now)` on each open one (returns false to drop it); a dropped or closed one is
-- replaced. counts.connects counts connections made.
local function pool(ctx, n, open, tick)
  local conns = {}
  return function(now)
    for i = 1, n do
      local st = conns[i]
      if st and st.c and tick(st, now) == false then
        st.c:close()
        st = nil
      end
      if not st then
        local c = connect(ctx.host, ctx.port)
        if c then
          ctx.counts.connects = ctx.counts.connects + 1
          st = { c = c, since = now }
          open(st, now)
        end
        conns[i] = st
      end
    end
    return true
  end
end

local KINDS = {}

-- connect, send nothing, hold the connection (another at once when the server closes it)
function KINDS.idle(ctx)
  return pool(ctx, 50, function() end, function(st) return not gone(st.c) end)
end

-- connections beyond the limit: 300 held open, replaced as soon as the server drops one
function KINDS.beyond(ctx)
  return pool(ctx, 300, function() end, function(st) return not gone(st.c) end)
end

-- half a head, then one header byte every 100 ms, never finishing
function KINDS.slowloris(ctx)
  return pool(ctx, 20, function(st, now)
    st.c:send("GET /metrics HTTP/1.1\r\nHost: slow\r\n")
    st.next = now
  end, function(st, now)
    if gone(st.c) then return false end
    if now >= st.next then
      st.next = now + 0.1
      if not push(st.c, "X", 1) then return false end
    end
  end)
end

-- a 1 MB header sent slowly (1 KB every 10 ms)
function KINDS.bigheader(ctx)
  local chunk = ("a"):rep(1024)
  return pool(ctx, 4, function(st, now)
    st.c:send("GET /metrics HTTP/1.1\r\nHost: big\r\nX-Big: ")
    st.sent, st.next = 0, now
  end, function(st, now)
    if gone(st.c) then return false end
    if now >= st.next and st.sent < 1024 * 1024 then
      st.next = now + 0.01
      if not push(st.c, chunk, 1) then return false end
      st.sent = st.sent + #chunk
    end
  end)
end

-- a request then a half close (FIN), never reading; and half heads ended by a reset
function KINDS.halfopen(ctx)
  local fin = pool(ctx, 20, function(st)
    st.c:send(GET)
    st.c:shutdown("send")
  end, function() end) -- held, never read
  return function(now)
    fin(now)
    for _ = 1, 5 do
      local c = connect(ctx.host, ctx.port)
      if c then
        ctx.counts.connects = ctx.counts.connects + 1
        c:send("GET /metr")
        c:setoption("linger", { on = true, timeout = 0 })
        c:close() -- RST: the peer vanishes mid-request
      end
    end
  end
end

M.MALFORMED = {
  "GET /" .. ("a"):rep(1024 * 1024) .. " HTTP/1.1\r\nHost: x\r\n\r\n",     -- 1 MB request line
  "\22\3\1\0\165\1\0\0\161\3\3" .. ("\0"):rep(200),                        -- a TLS ClientHello
  "GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n",
  "GET /metrics HTTP/1.1\nHost: x\n\n",                                    -- bare LF
  "GET /metrics HTTP/1.1\r\nHost: x\r\n" .. ("X-H: v\r\n"):rep(100) .. "\r\n",
  "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
  "GET /met\0rics HTTP/1.1\r\nHost: x\r\n\r\n",
  "GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",
  "GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
  "GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
  "\r\n\r\n\r\n\r\n\r\n\r\n\r\n",
  ("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: " .. ("b"):rep(9000) .. "\r\n\r\n"),
}

-- malformed and oversized requests, a few new connections every tick
function KINDS.malformed(ctx)
  local k = 0
  local open = {}
  return function(now)
    for _ = 1, 4 do
      k = k % #M.MALFORMED + 1
      local c = connect(ctx.host, ctx.port)
      if c then
        ctx.counts.connects = ctx.counts.connects + 1
        open[#open + 1] = { c = c, s = M.MALFORMED[k], i = 1, until_ = now + 1 }
      end
    end
    for j = #open, 1, -1 do
      local st = open[j]
      if st.i and st.i <= #st.s then st.i = push(st.c, st.s, st.i) end
      local closed, got = gone(st.c)
      if got and got:match("^HTTP/1%.1 [45]") then ctx.counts.refused = ctx.counts.refused + 1 end
      if closed or now > st.until_ then
        st.c:close()
        table.remove(open, j)
      end
    end
  end
end

-- thousands of pipelined requests on a connection, never read
function KINDS.pipeline(ctx)
  local burst = GET:rep(2000)
  return pool(ctx, 8, function(st) st.i = 1 end, function(st)
    if st.i <= #burst then
      st.i = push(st.c, burst, st.i)
      if not st.i then return false end
    end
    local _, err = st.c:receive(0)
    if err == "closed" then return false end
  end)
end

-- a request at a time, answers never read
function KINDS.noread(ctx)
  return pool(ctx, 16, function(st) st.i = 1 end, function(st)
    st.i = push(st.c, GET, st.i)
    if not st.i then return false end
    if st.i > #GET then st.i = 1 end
  end)
end

-- scrapes back to back on kept-alive connections, every answer read
function KINDS.scrapes(ctx)
  return pool(ctx, 16, function(st) st.c:send(GET) st.buf = "" end, function(st)
    local data, err, partial = st.c:receive(65536)
    st.buf = st.buf .. (data or partial or "")
    if err == "closed" then return false end
    while true do
      local head_end = st.buf:find("\r\n\r\n", 1, true)
      if not head_end then break end
      local len = tonumber(st.buf:sub(1, head_end):match("[Cc]ontent%-[Ll]ength: (%d+)")) or 0
      if #st.buf < head_end + 3 + len then break end
      st.buf = st.buf:sub(head_end + 4 + len)
      ctx.counts.answers = ctx.counts.answers + 1
      if not push(st.c, GET, 1) then return false end
    end
  end)
end

M.KINDS = KINDS

-- run(kind, host, port, seconds, out) -- the attack; prints "ready" and "done ..." to out
function M.run(kind, host, port, seconds, out)
  out = out or io.stdout
  local make = KINDS[kind]
  if not make then error("hostile: unknown kind " .. tostring(kind)) end
  local ctx = { host = host, port = port, counts = { connects = 0, refused = 0, answers = 0 } }
  local tick = make(ctx)
  local t0 = socket.gettime()
  tick(t0)
  out:write("ready\n")
  out:flush()
  while not seconds or socket.gettime() - t0 < seconds do
    tick(socket.gettime())
    socket.sleep(0.005)
  end
  out:write(string.format("done connects=%d refused=%d answers=%d\n", ctx.counts.connects,
    ctx.counts.refused, ctx.counts.answers))
  out:flush()
end

function M.command(kind, host, port, seconds)
  local raw = require("spec.helpers.raw")
  return "exec env -u LD_PRELOAD lua5.4 -e " .. raw.q(raw.PRELUDE .. string.format(
    " require('spec.helpers.hostile').run(%q, %q, %d, %s)", kind, host, port, tostring(seconds)))
end

return M
