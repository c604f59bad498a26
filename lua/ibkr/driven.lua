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

-- co -> the name of what drives it now ("ibkr.run", "ibkr.luv", "ibkr.cqueues"): one driver at
-- a time per coroutine, whichever. Weak keys, as for the schedule below.
local owners = setmetatable({}, { __mode = "k" })

-- Claims every suspended coroutine of `list` for `who`, or raises (at `level`, as error() counts
-- it in the caller of this function's caller) naming the first one another driver drives now,
-- claiming none. Returns the list of those claimed (release them with M.release).
function M.claim(list, who, level)
  for i, co in ipairs(list) do
    local by = owners[co]
    if by then
      error(who .. ": coroutine " .. i .. " is already being driven (by " .. by .. ")", level + 1)
    end
  end
  local claimed = {}
  for _, co in ipairs(list) do
    if status(co) == "suspended" and not owners[co] then
      owners[co] = who
      claimed[#claimed + 1] = co
    end
  end
  return claimed
end

-- Ends the claim of co (a driver done with it: stopped, or it ended).
function M.release(co)
  owners[co] = nil
end

-- Descriptors a driver hands to a host's poller must stay open until the poller stops watching
-- them: a request's descriptor is closed with the request, and coroutine.close(co) closes the
-- request co waits on (its to-be-closed variable) from anywhere — another callback of the same
-- loop turn, the main chunk. libuv aborts, and a cqueues controller fails, when a descriptor
-- they watch is closed under them. So a driver registers, while it watches a pollable's
-- descriptor, how to stop watching it (M.watch); a call suspended on a pollable holds a guard
-- (M.guard, ibkr/waiter.lua) that, when the coroutine is closed there, stops every such watcher
-- of that pollable first (M.closing), before the request is closed. Keyed by the pollable, not by
-- its number: the number it reports can change while it waits.
local watchers = setmetatable({}, { __mode = "k" }) -- pollable -> { [stop] = true }

function M.watch(p, stop)
  local set = watchers[p]
  if not set then
    set = {}
    watchers[p] = set
  end
  set[stop] = true
end

function M.unwatch(p, stop)
  local set = watchers[p]
  if set then
    set[stop] = nil
    if next(set) == nil then watchers[p] = nil end
  end
end

-- Stops every watcher of p's descriptor (each stop function is called once; it may resume its
-- coroutine later, never from here).
function M.closing(p)
  local set = watchers[p]
  if not set then return end
  watchers[p] = nil
  for stop in pairs(set) do stop() end
end

-- guard(p) -> a to-be-closed value for the time a call yields p: closed while still armed (the
-- coroutine closed during the yield), it stops the watchers of p; disarm(g) after the yield.
local Guard = { __close = function(g) if g[1] then M.closing(g[1]) end end }
function M.guard(p)
  return setmetatable({ p }, Guard)
end


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
-- p = the pollable fd is from (watch it with M.watch), hint = the seconds it yielded }
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
  e.clock, e.hint, e.fd, e.events, e.p = clock, secs, nil, nil, nil
  local wait = secs
  if with_fds and p ~= nil and (type(p) == "userdata" or type(p) == "table") then
    local fd = p:pollfd()
    if mtype(fd) == "integer" and fd >= 0 then
      local ev = p.events and p:events()
      local t = p.timeout and p:timeout()
      e.fd, e.events, e.p = fd, (ev == "w" or ev == "rw") and ev or "r", p
      wait = type(t) == "number" and t >= 0 and t or huge
    end
  end
  e.due = clock() + wait
  return e
end

return M
