-- What ibkr-session keepalive --listen answers (docs/cli.md, "Running next to the gateway"):
--   GET /livez    200 while the keep-alive loop runs on time, else 503; {"live":...}
--   GET /readyz   200 when the session is ready, else 503; {"state":...,"since":...,"detail":...}
--   GET /metrics  the session's figures (s:stats() through ibkr.metrics) and the sidecar's own,
--                 in the Prometheus text format 0.0.4
-- HEAD on each (the same head, no body); other methods 405; other paths 404. Built from the session
-- and the loop's health only: no I/O here.

local core = require("ibkr.core")
local metrics = require("ibkr.metrics")
local out = require("ibkr.cli.out")
local report = require("ibkr.cli.report")

local M = {}

M.LATE = 2       -- seconds the keep-alive may be overdue before /livez says it is not on time
M.LATE_MEMORY = 10 -- seconds /livez goes on saying so after a resume that came that late

local JSON = { "Content-Type", "application/json" }
local TEXT = { "Content-Type", "text/plain; charset=utf-8" }
local NO_STORE = { "Cache-Control", "no-store" }

local function json(status, doc) return status, { JSON, NO_STORE }, out.json(doc) .. "\n" end

local function utc(epoch) return os.date("!%Y-%m-%dT%H:%M:%SZ", epoch) end -- as the log lines

local ROUTES = {}

-- The keep-alive is on time while the loop resumes it no later than LATE seconds after it asked:
-- not now overdue, and no resume that late in the last LATE_MEMORY seconds (a loop that stalled --
-- a stopped process, a starved CPU -- says so for a while after it recovered).
function ROUTES.livez(o)
  local h, now = o.health, o.clock()
  local overdue = h.due and now - h.due or 0
  if overdue > M.LATE then
    return json(503, { live = false, overdue = overdue,
      reason = string.format("the keep-alive is %.1f s overdue", overdue) })
  end
  if h.late and h.late > M.LATE and now - h.resumed < M.LATE_MEMORY then
    return json(503, { live = false, late = h.late, ago = now - h.resumed,
      reason = string.format("the keep-alive was resumed %.1f s late %.1f s ago", h.late, now - h.resumed) })
  end
  return json(200, { live = true })
end

-- When the session entered its state, as the log lines say it: the time o.entered() gives for this
-- state (the keep-alive's state line), else one worked out once from the state's age when the
-- state is first seen here (and again only when it changes), never again per scrape: a wall
-- clock second minus a rounded age would move by a second from one scrape to the next.
local function since(o, st)
  local state, stamp = o.entered()
  if state == st and stamp then return stamp end
  local age = o.session:stats().state_age
  if not age then return nil end
  local seen = o.seen
  if seen.state ~= st or age < seen.age then
    seen.state, seen.stamp = st, utc(os.time() - math.floor(age + 0.5))
  end
  seen.age = age
  return seen.stamp
end

function ROUTES.readyz(o)
  local st, detail = o.session:state()
  local doc = { state = st or out.null, since = st and since(o, st) or out.null,
    detail = st and report.describe(detail) or "no answer from the gateway yet" }
  return json(st == "ready" and 200 or 503, doc)
end

function ROUTES.metrics(o)
  local fams = metrics.families(o.session:stats(), { push = o.push })
  for _, f in ipairs(o.families and o.families() or {}) do fams[#fams + 1] = f end
  return 200, { { "Content-Type", metrics.CONTENT_TYPE }, NO_STORE }, metrics.render(fams)
end

local PATHS = { ["/livez"] = ROUTES.livez, ["/readyz"] = ROUTES.readyz, ["/metrics"] = ROUTES.metrics }

-- handler{session=, health=, families=function() -> extra families, push=, clock=,
-- entered=function() -> state, "YYYY-MM-DDTHH:MM:SSZ" it was entered at (the log line's time)} ->
-- function(req) -> status, headers, body (for ibkr/cli/listen.lua)
function M.handler(o)
  o.clock = o.clock or core.monotonic
  o.entered = o.entered or function() return nil end
  o.seen = {}
  return function(req)
    local route = PATHS[req.path]
    if not route then
      return 404, { TEXT }, "not found: this endpoint serves /livez, /readyz and /metrics\n"
    end
    if req.method ~= "GET" and req.method ~= "HEAD" then
      return 405, { TEXT, { "Allow", "GET, HEAD" } }, "method not allowed: GET or HEAD\n"
    end
    return route(o)
  end
end

return M
