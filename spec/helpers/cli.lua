-- Test helper for ibkr-session: runs bin/ibkr-session as a real process, as a user would.
--   local cli = require("spec.helpers.cli")
--   local rc, out, err, secs = cli.run{ "--url", url, "status" }   -- waits for the end
--   local p = cli.spawn({ "--url", url, "keepalive" })             -- a running process:
--   p.pid, p:line() (next stdout line or nil), p:kill("TERM"), p:finish() -> how, code, rest
local core = require("ibkr.core")

local M = {}

M.SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1

M.q = require("spec.helpers.raw").q -- one shell quoting for every helper

local function command(args, env)
  local cmd = (env or "") .. " exec bin/ibkr-session"
  for _, a in ipairs(args) do cmd = cmd .. " " .. M.q(a) end
  return cmd
end

local function slurp(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  os.remove(path)
  return s
end

-- Runs ibkr-session with args (a list) and env (a "NAME=value ..." prefix); returns the exit
-- code, stdout, stderr and the seconds it took.
function M.run(args, env)
  local errfile = os.tmpname()
  local t0 = core.monotonic()
  local p = assert(io.popen("(" .. command(args, env) .. ") 2>" .. errfile .. " </dev/null; echo \"rc=$?\""))
  local out = p:read("a")
  p:close()
  local secs = core.monotonic() - t0
  local body, rc = out:match("^(.-)rc=(%d+)\n$")
  return tonumber(rc), body, slurp(errfile), secs
end

local proc = {}
proc.__index = proc

-- Starts ibkr-session in the background; stdout is read line by line, stderr goes to a file.
function M.spawn(args, env)
  local errfile = os.tmpname()
  local p = assert(io.popen("echo $$; " .. command(args, env) .. " 2>" .. errfile .. " </dev/null"))
  local pid = assert(math.tointeger(tonumber(p:read("l"))))
  return setmetatable({ p = p, pid = pid, errfile = errfile }, proc)
end

function proc:line() return self.p:read("l") end

function proc:kill(sig)
  self.killed_at = core.monotonic()
  os.execute("kill -" .. sig .. " " .. self.pid)
end

-- Reads the rest of stdout until the process ends; returns how ("exit"/"signal"), the code,
-- the rest of stdout, stderr, and the seconds since kill() (when it was called).
function proc:finish()
  local rest = self.p:read("a")
  local _, how, code = self.p:close()
  local secs = self.killed_at and core.monotonic() - self.killed_at
  return how, code, rest, slurp(self.errfile), secs
end

-- Every line of s decoded as JSON (fails the test on a line that is not JSON).
function M.json_lines(s)
  local cjson = require("cjson")
  local t = {}
  for line in s:gmatch("[^\n]+") do t[#t + 1] = cjson.decode(line) end
  return t
end

return M
