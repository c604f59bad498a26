-- ibkr.run: drives keep-alive coroutines (or any coroutine that yields "seconds until my next
-- resume", optionally followed by a pollable) from a plain script. It waits in poll(2) on the
-- completion descriptors of the requests in flight, until the earliest timer: a coroutine whose
-- answer arrived is resumed at once, without polling in small sleeps.

local core = require("ibkr.core")

local M = {}

-- When each coroutine wants its next resume, and the descriptor it waits on, kept across run()
-- calls so that driving again later respects the schedule. Weak keys: a coroutine the user drops
-- is not kept alive here.
local wake_at = setmetatable({}, { __mode = "k" })
local wait_fd = setmetatable({}, { __mode = "k" })
local wait_ev = setmetatable({}, { __mode = "k" })

-- An object that is driven through its coroutine (a push stream: st:coroutine()), or nil.
local function driven(x)
  local mt = (type(x) == "table" or type(x) == "userdata") and getmetatable(x)
  local f = type(mt) == "table" and type(mt.__index) == "table" and rawget(mt.__index, "coroutine")
  if type(f) ~= "function" then return nil end
  local co = f(x)
  return type(co) == "thread" and co or nil
end

local function check(cos, opts)
  local list = cos
  local one = type(cos) == "thread" and cos or driven(cos)
  if one then list = { one } end
  if type(list) ~= "table" then error("ibkr.run: expects a coroutine or a list of coroutines", 3) end
  if not one then
    local t = {}
    for i, co in ipairs(list) do
      t[i] = type(co) == "thread" and co or driven(co)
      if not t[i] then error("ibkr.run: element " .. i .. " is not a coroutine", 3) end
    end
    list = t
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("ibkr.run: options must be a table", 3) end
  local duration = opts.duration
  if duration ~= nil and (type(duration) ~= "number" or duration ~= duration or duration < 0) then
    error("ibkr.run: 'duration' must be a number >= 0", 3)
  end
  return list, opts
end

local status, resume_co, huge = coroutine.status, coroutine.resume, math.huge

-- resumes co; records when it wants the next resume and the descriptor it waits on (the pollable
-- yielded after the seconds: its :pollfd(), with :timeout() as the time limit)
local function resume(co, clock, with_fds)
  local ok, wait, p = resume_co(co)
  if not ok then error(wait, 0) end
  if status(co) == "dead" then
    wake_at[co], wait_fd[co], wait_ev[co] = nil, nil, nil
    return
  end
  if type(wait) ~= "number" or wait ~= wait or wait < 0 then wait = 0 end
  local fd = with_fds and p ~= nil and (type(p) == "userdata" or type(p) == "table") and p.pollfd
    and p:pollfd()
  if math.type(fd) == "integer" and fd >= 0 then
    local t = p.timeout and p:timeout()
    wait = type(t) == "number" and t >= 0 and t or huge
    wait_fd[co] = fd
    local ev = p.events and p:events()
    wait_ev[co] = (ev == "w" or ev == "rw") and ev or "r"
  else
    wait_fd[co] = nil
  end
  wake_at[co] = clock() + wait
end

-- run(co_or_list, {duration = s, clock = fn, sleep = fn}) -> true when all ended, false when the
-- duration passed first (those still alive stay alive and can be driven again).
-- A coroutine that raises makes run raise that error (a keep-alive never raises).
-- With opts.sleep (a fake or a host's sleep) descriptors are not waited on: coroutines are
-- resumed after the seconds they yielded.
function M.run(cos, opts)
  local list
  list, opts = check(cos, opts)
  local clock, sleep = opts.clock or core.monotonic, opts.sleep or core.sleep
  local with_fds = opts.sleep == nil
  local deadline = opts.duration and clock() + opts.duration
  local fds, evs, owners, ready = {}, {}, {}, {}
  while true do
    local earliest, nfd = nil, 0
    for i = 1, #list do
      local co = list[i]
      if status(co) == "suspended" then
        local due = wake_at[co]
        if not due or ready[co] or due <= clock() then resume(co, clock, with_fds) end
        if status(co) == "suspended" then
          due = wake_at[co]
          if not earliest or due < earliest then earliest = due end
          local fd = wait_fd[co]
          if fd then
            nfd = nfd + 1
            fds[nfd], evs[nfd], owners[nfd] = fd, wait_ev[co], co
          end
        end
      end
    end
    for k in pairs(ready) do ready[k] = nil end
    if not earliest then return true end
    for i = nfd + 1, #fds do fds[i], evs[i], owners[i] = nil, nil, nil end
    local now = clock()
    local until_ = earliest
    if deadline and until_ > deadline then until_ = deadline end
    if nfd > 0 then
      local left = until_ - now
      local got = { core.poll(fds, left < huge and (left > 0 and left or 0) or nil, evs) }
      for i = 1, #got do ready[owners[got[i]]] = true end
    elseif until_ > now then
      sleep(until_ - now)
    end
    if deadline and clock() >= deadline and not next(ready) then return false end
  end
end

return M
