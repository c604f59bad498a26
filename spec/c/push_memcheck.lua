-- push_memcheck.lua [ROUNDS]: the push channel's every path, ROUNDS times (default 3), for
-- `valgrind --leak-check=full lua5.4 spec/c/push_memcheck.lua` (make valgrind-push): streams
-- against the mock gateway over ws and wss (greeting, topics, messages, tic, a drop and a
-- reconnect, st:close, s:close, coroutine.close, a stream dropped to the GC while connecting and
-- while open, a keep-alive holding the channel), and against the raw hostile server (a refused
-- upgrade, a wrong accept, a masked frame, invalid UTF-8, a 100 MB frame header, an odd close,
-- a hang-up mid-frame, silence). Prints what happened; exits non-zero when a path was not taken.
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
local ibkr = require("ibkr")
local core = ibkr.core
local mock = require("spec.helpers.mock")
local clock = require("spec.helpers.clock")
local wsserver = require("spec.helpers.wsserver")

local ROUNDS = tonumber(arg[1]) or 3
local tally = {}
local function count(what) tally[what] = (tally[what] or 0) + 1 end

-- drives coroutines on the real clock until done() (valgrind: generous limits)
local function drive(list, done, secs)
  local limit = core.monotonic() + (secs or 120)
  local wake, pol = {}, {}
  while not done() do
    assert(core.monotonic() < limit, "timed out")
    local fds, evs, earliest = {}, {}, core.monotonic() + 0.05
    for _, co in ipairs(list) do
      local p = pol[co]
      local fd = p and p:pollfd() or -1
      local ready = fd >= 0 and core.poll({ fd }, 0, { p:events() }) ~= nil
      if coroutine.status(co) == "suspended" and (ready or not wake[co] or wake[co] <= core.monotonic()) then
        local ok, w, p2 = coroutine.resume(co)
        assert(ok, w)
        wake[co], pol[co], p = core.monotonic() + (tonumber(w) or 0), p2, p2
        fd = p and p:pollfd() or -1
      end
      if coroutine.status(co) == "suspended" then
        if wake[co] < earliest then earliest = wake[co] end
        if fd >= 0 then fds[#fds + 1], evs[#evs + 1] = fd, p:events() end
      end
    end
    local left = earliest - core.monotonic()
    if left > 0 then core.poll(fds, left, evs) end
  end
end

local function only(got, topic, event)
  local n = 0
  for _, m in ipairs(got) do if m.topic == topic and (not event or m.event == event) then n = n + 1 end end
  return n
end

local function against_mock(gw)
  local s = ibkr.new{ base_url = gw.url, timeout = 60, connect_timeout = 60, pacing = false }
  local got = {}
  local st = s:stream{ topics = { "sor+{}", "smd+265598+{\"fields\":[\"31\"]}" }, tic_interval = 0.2,
    on_message = function(m) got[#got + 1] = m end }
  drive({ st:coroutine() }, function() return only(got, "sor") == 1 and only(got, "tic") >= 1 end)
  count("messages")
  gw:ws_drop()
  drive({ st:coroutine() }, function() return only(got, "ibkr", "reconnected") == 1 end)
  count("reconnected")
  st:close()
  -- a keep-alive holding the channel, ended by s:close()
  local seen = {}
  local ka = s:keepalive{ push = true, interval = 600, on_state = function(new) seen[#seen + 1] = new end }
  drive({ ka }, function() return gw:ws().counters.greeted >= 3 end)
  gw:set_state("competing")
  drive({ ka }, function() return seen[#seen] == "competing" end)
  count("pushed state")
  gw:set_state("ready")
  -- dropped to the GC: while connecting, and while open
  local st2 = s:stream{}
  coroutine.resume(st2:coroutine())
  st2 = nil -- luacheck: ignore st2
  local got3 = {}
  local st3 = s:stream{ on_message = function(m) got3[#got3 + 1] = m end }
  drive({ st3:coroutine() }, function() return #got3 >= 1 end)
  st3 = nil -- luacheck: ignore st3
  collectgarbage()
  collectgarbage()
  count("collected")
  -- coroutine.close while open; s:close with a stream open
  local st4 = s:stream{}
  drive({ st4:coroutine() }, function() return st4:state() == "open" end)
  coroutine.close(st4:coroutine())
  local st5 = s:stream{}
  drive({ st5:coroutine() }, function() return st5:state() == "open" end)
  s:close()
  assert(st5:state() == "closed")
  count("closed")
end

-- the raw hostile server: each behaviour on the first connection, an honest one afterwards
local HOSTILE = {
  refused = function(c) c:accept{ status = 401, body = '{"error":"no session"}' } end,
  accept = function(c) c:accept{ accept = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=" } end,
  masked = function(c) c:accept(); c:text("{}", { mask = "abcd" }) end,
  utf8 = function(c) c:accept(); c:text("\xff") end,
  huge = function(c)
    c:accept{ greet = true }
    c:raw(wsserver.frame(1, "x", { length = 100 * 1024 * 1024 }))
  end,
  close = function(c) c:accept{ greet = true }; c:close_frame(4001, "odd") end,
  hangup = function(c)
    c:accept{ greet = true }
    c:raw(wsserver.frame(1, string.rep("y", 500)):sub(1, 50))
    c:hangup(true)
  end,
  silence = function(c) c:accept() end,
  fragments = function(c)
    c:accept{ greet = true }
    c:text("[1,", { fin = false })
    c:ping("x")
    c:frame(0, "2]")
    c:hangup()
  end,
}

local function hostile(name, behave, tls)
  local srv = wsserver.new{ tls = tls }
  local ft = clock.new()
  local s = ibkr.new{ base_url = srv.url, clock = ft.clock, timeout = 60, connect_timeout = 60 }
  local got = {}
  local st = s:stream{ heartbeat_timeout = 5, on_message = function(m) got[#got + 1] = m end }
  srv.on_upgrade = function(c, req)
    if srv.upgrades == 1 then behave(c, req) else c:accept{ greet = true } end
  end
  wsserver.drive(st:coroutine(), srv, ft, function() return only(got, "ibkr", "reconnected") == 1 end, 120)
  count("hostile " .. name)
  st:close()
  srv:close()
  s:close()
end

local plain = assert(mock.start{ tls = false, pacing = false, ws_greeting_delay = 0, ws_heartbeat = 0.2 })
local tls = assert(mock.start{ tls = true, pacing = false, ws_greeting_delay = 0, ws_heartbeat = 0.2 })
for _ = 1, ROUNDS do
  against_mock(plain)
  against_mock(tls)
  for name, behave in pairs(HOSTILE) do hostile(name, behave, name == "hangup") end
end
plain:stop()
tls:stop()
collectgarbage()
local names = {}
for k in pairs(tally) do names[#names + 1] = k end
table.sort(names)
for _, k in ipairs(names) do print(string.format("%-20s %d", k, tally[k])) end
local want = 5 + 9 -- the mock paths and the hostile ones
if #names ~= want then
  io.stderr:write("push_memcheck: ", #names, " paths taken, ", want, " expected\n")
  os.exit(1)
end
