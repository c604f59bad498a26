-- What the drivers (ibkr.run, ibkr.luv, ibkr.cqueues) drive: the coroutines in what a user hands
-- them, and one resume read as what to wait for before the next one (docs/hosts.md):
--   local ok, seconds, pollable = coroutine.resume(co)
-- `seconds` until the coroutine wants its next resume; `pollable`, while a request is in
-- flight, an object with :pollfd() (a descriptor, -1 for none), :events() ("r", "w", "rw") and
-- :timeout() (seconds after which to resume anyway), cqueues' convention.
--
-- The schedule of each coroutine (when it is due, what it waits on) outlives one driver: driving
-- a coroutine again later, with any driver on the same clock, keeps its schedule (a keep-alive
-- driven again does not tickle early). Weak keys: a coroutine the user drops is not kept here.

local M = {}

local resume_co, status, mtype, huge = coroutine.resume, coroutine.status, math.type, math.huge

-- v as a coroutine: v itself, or what its :coroutine() method returns; nil when it is neither.
local function one(v, who, what, level)
  if type(v) == "thread" then return v end
  local ok, method = pcall(function() return v.coroutine end)
  if (type(v) == "table" or type(v) == "userdata") and ok and type(method) == "function" then
    local co = v:coroutine()
    if type(co) ~= "thread" then
      error(who .. ": " .. what .. ":coroutine() returned a " .. type(co) .. ", not a coroutine", level + 1)
    end
    return co
  end
  return nil
end

-- x: a coroutine, an object with a :coroutine() method (a stream), or a list of these.
-- Returns a new list of coroutines. On anything else raises an error naming `who`, at `level`
-- as error() counts it in the function that calls this one.
function M.coroutines(x, who, level)
  level = level + 1
  local co = one(x, who, "the argument", level)
  if co then return { co } end
  if type(x) ~= "table" then
    error(who .. ": expects a coroutine, an object with a :coroutine() method, or a list of them; got a "
      .. type(x), level)
  end
  local list = {}
  for i = 1, #x do
    local c = one(x[i], who, "element " .. i, level)
    if not c then
      error(who .. ": element " .. i .. " is a " .. type(x[i])
        .. ", not a coroutine or an object with a :coroutine() method", level)
    end
    list[i] = c
  end
  if next(x) ~= nil and #list == 0 then
    error(who .. ": expects a coroutine, an object with a :coroutine() method, or a list of them", level)
  end
  return list
end

-- co -> its schedule entry: { clock = the clock its times are on, due = when to resume it unless
-- its descriptor wakes it first, fd = the descriptor to watch (or nil), events = what for on fd,
-- hint = the seconds it yielded }
local entries = setmetatable({}, { __mode = "k" })

-- The entry of co when it was last resumed on `clock`, else nil (then: resume it at once).
function M.entry(co, clock)
  local e = entries[co]
  if e and e.clock == clock then return e end
  return nil
end

-- Resumes co (suspended) and records what it yielded. Returns its entry (above), or nil when it
-- ended; raises what it raised. With `with_fds` false (a driver that only sleeps) the descriptor
-- is not asked for and `due` is after the seconds it yielded.
function M.resume(co, clock, with_fds)
  local ok, secs, p = resume_co(co)
  if not ok then
    entries[co] = nil
    error(secs, 0)
  end
  if status(co) == "dead" then
    entries[co] = nil
    return nil
  end
  if type(secs) ~= "number" or secs ~= secs or secs < 0 then secs = 0 end
  local e = entries[co]
  if not e then
    e = {}
    entries[co] = e
  end
  e.clock, e.hint, e.fd, e.events = clock, secs, nil, nil
  local wait = secs
  if with_fds and p ~= nil and (type(p) == "userdata" or type(p) == "table") then
    local fd = p:pollfd()
    if mtype(fd) == "integer" and fd >= 0 then
      local ev = p.events and p:events()
      local t = p.timeout and p:timeout()
      e.fd, e.events = fd, (ev == "w" or ev == "rw") and ev or "r"
      wait = type(t) == "number" and t >= 0 and t or huge
    end
  end
  e.due = clock() + wait
  return e
end

return M
