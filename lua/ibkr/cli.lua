-- ibkr-session: the command-line client (bin/ibkr-session is a thin launcher of main()).
-- Exit codes: 0 success (status: the session is ready), 1 the gateway answered but the session is
-- not ready or the call failed, 2 the gateway is unreachable (connect, timeout, TLS), 64 usage.

local ibkr = require("ibkr")
local state = require("ibkr.state")

local M = {}

M.USAGE = [[
usage: ibkr-session [--url URL] [--insecure | --cacert FILE] [--timeout S] [--oauth-config F] [--json] COMMAND
commands:
  status                      brokerage session state (exit 0 only when ready)
  tickle                      POST /tickle
  validate                    GET /sso/validate
  init [--compete]            POST /iserver/auth/ssodh/init
  reauthenticate              POST /iserver/reauthenticate
  logout                      POST /logout
  keepalive [--interval S] [--duration S] [--compete]
                              keep the session alive; one line per state change
options:
  --url URL      gateway base URL (default: $IBKR_BASE_URL, else https://localhost:5000/v1/api)
  --insecure     do not verify the TLS certificate
  --cacert FILE  verify the TLS certificate against this PEM file
  --timeout S    seconds for a whole request (default 10)
  --oauth-config FILE  headless OAuth 1.0a session, no gateway (docs/oauth.md: file format)
  --json         print one JSON document (keepalive: one JSON object per line)
exit codes: 0 ok/ready, 1 not ready or call failed, 2 gateway unreachable, 64 usage error
]]

local COMMANDS = {
  status = true, tickle = true, validate = true, init = true, reauthenticate = true,
  logout = true, keepalive = true,
}
-- option -> takes a value?, allowed with which command (nil = every command)
local OPTIONS = {
  ["--url"] = { value = true }, ["--cacert"] = { value = true }, ["--timeout"] = { value = true },
  ["--insecure"] = {}, ["--json"] = {}, ["--help"] = {}, ["-h"] = {},
  ["--oauth-config"] = { value = true }, -- [oauth]
  ["--compete"] = { only = { init = true, keepalive = true } },
  ["--interval"] = { value = true, only = { keepalive = true } },
  ["--duration"] = { value = true, only = { keepalive = true } },
}

local function usage_error(io_, msg)
  io_.stderr:write("ibkr-session: ", msg, "\n", M.USAGE:match("^[^\n]*\n"),
    "(ibkr-session --help lists the commands)\n")
  return 64
end

-- Parses argv into a table of options plus the command; returns nil, message on a usage error.
function M.parse(argv)
  local o = {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    local spec = OPTIONS[name]
    if spec then
      local v = true
      if spec.value then
        if inline then v = inline
        else
          i = i + 1
          v = argv[i]
          if v == nil then return nil, "option " .. name .. " needs a value" end
        end
      elseif inline then
        return nil, "option " .. name .. " takes no value"
      end
      o[name:gsub("^%-+", "")] = v
    elseif a:sub(1, 1) == "-" then
      return nil, "unknown option " .. a
    elseif o.command then
      return nil, "unexpected argument " .. a
    elseif COMMANDS[a] then
      o.command = a
    else
      return nil, "unknown command " .. a
    end
    i = i + 1
  end
  if o.help or o.h then return o end
  if not o.command then return nil, "missing command" end
  for name, spec in pairs(OPTIONS) do
    if spec.only and o[name:gsub("^%-+", "")] ~= nil and not spec.only[o.command] then
      return nil, "option " .. name .. " does not apply to " .. o.command
    end
  end
  if o.insecure and o.cacert then return nil, "--insecure and --cacert exclude each other" end
  for _, k in ipairs{ "timeout", "interval", "duration" } do
    if o[k] ~= nil then
      local n = tonumber(o[k])
      if not n or n ~= n or n <= 0 or n == math.huge then
        return nil, "--" .. k .. " needs a positive number of seconds"
      end
      o[k] = n
    end
  end
  return o
end

------------------------------------------------------------------------------------------------
-- Output

local json = require("cjson").new() -- private instance: our settings never touch the user's cjson
json.encode_sparse_array(true)

-- cjson escapes every "/" as "\/"; valid JSON, but paths read badly. A "\/" pair can only come
-- from that escape (a literal backslash is written "\\"), so undoing it is safe.
local function encode(v)
  return (json.encode(v):gsub("\\/", "/"))
end

local function plain_error(err)
  local t = {}
  for _, k in ipairs{ "kind", "status", "message", "method", "path", "retry_after", "curl_code", "data" } do
    t[k] = err[k]
  end
  return t
end

local function exit_code_of_error(err)
  return state.of_error(err) == "down" and 2 or 1
end

local function describe_status(st)
  local parts = {}
  for _, k in ipairs{ "authenticated", "connected", "competing", "established" } do
    if st[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(st[k]) end
  end
  if type(st.message) == "string" and st.message ~= "" then parts[#parts + 1] = "message=" .. st.message end
  if type(st.error) == "string" then parts[#parts + 1] = "error=" .. st.error end
  return table.concat(parts, " ")
end

local function describe(detail)
  if ibkr.is_error(detail) then return tostring(detail) end
  if type(detail) == "table" then return describe_status(detail) end
  return tostring(detail)
end

-- What each command does: returns the JSON document, the human line(s), the exit code.
local RUN = {}

function RUN.status(s)
  local st, detail = s:health()
  local doc = { command = "status", state = st, ok = st == "ready" }
  if ibkr.is_error(detail) then doc.error = plain_error(detail) else doc.result = detail end
  local code = st == "ready" and 0 or (st == "down" and 2 or 1)
  return doc, st .. " (" .. describe(detail) .. ")", code
end

local function simple(name, fn, human, code_of)
  RUN[name] = function(s, o)
    local res, err = fn(s, o)
    if res == nil then
      return { command = name, ok = false, error = plain_error(err) }, nil, exit_code_of_error(err), err
    end
    local code, extra = code_of(res)
    local doc = { command = name, ok = code == 0, result = res }
    for k, v in pairs(extra or {}) do doc[k] = v end
    return doc, human(res, extra), code
  end
end

simple("tickle", function(s) return s:tickle() end,
  function(res, extra)
    local line = "tickle ok"
    if extra.state then line = line .. ": " .. extra.state end
    if res.session then line = line .. ", session " .. tostring(res.session) end
    if math.type(res.ssoExpires) then
      line = line .. string.format(", sso expires in %.0f s", res.ssoExpires / 1000)
    end
    return line
  end,
  function(res)
    local st = state.tickle_status(res)
    if st then
      local name = state.of_status(st)
      return name == "ready" and 0 or 1, { state = name }
    end
    if res.error == "no session" then return 1, { state = "no_session" } end
    return 0, {}
  end)

simple("validate", function(s) return s:sso_validate() end,
  function(res)
    local line = "validate " .. (res.RESULT == false and "RESULT=false" or "ok")
    if res.USER_NAME then line = line .. ": user " .. tostring(res.USER_NAME) end
    if math.type(res.EXPIRES) then line = line .. string.format(", expires in %.0f s", res.EXPIRES / 1000) end
    return line
  end,
  function(res) return res.RESULT == false and 1 or 0 end)

simple("init", function(s, o) return s:init_brokerage{ compete = o.compete == true } end,
  function(res, extra) return extra.state .. " (" .. describe_status(res) .. ")" end,
  function(res)
    local name = state.of_status(res)
    return name == "ready" and 0 or 1, { state = name }
  end)

simple("reauthenticate", function(s) return s:reauthenticate() end,
  function(res) return "reauthenticate: " .. tostring(res.message or "ok") end,
  function() return 0 end)

simple("logout", function(s) return s:logout() end,
  function(res) return res.status == false and "logout: status=false" or "logged out" end,
  function(res) return res.status == false and 1 or 0 end)

local function timestamp()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- keepalive: one line per state change on stdout (flushed: the process ends by a signal);
-- failures and repairs go to stderr so stdout stays one line per change.
function RUN.keepalive(s, o, io_)
  local out, errout = io_.stdout, io_.stderr
  local last, last_error
  local co = s:keepalive{
    interval = o.interval or 60,
    retry_interval = math.min(5, o.interval or 5),
    compete = o.compete == true,
    on_state = function(new, old, detail)
      last = new
      if new == "ready" then last_error = nil end
      if o.json then
        local doc = { time = timestamp(), state = new, old = old }
        if ibkr.is_error(detail) then doc.error = plain_error(detail) else doc.detail = detail end
        out:write(encode(doc), "\n")
      else
        out:write(timestamp(), " ", new, old and (" (was " .. old .. ")") or "", ": ", describe(detail), "\n")
      end
      out:flush()
    end,
    on_error = function(err) -- the same failure every retry_interval is said once until ready
      local line = tostring(err)
      if line ~= last_error then
        last_error = line
        errout:write(timestamp(), " error: ", line, "\n")
        errout:flush()
      end
    end,
    on_repair = function(action, res, err)
      errout:write(timestamp(), " repair: ", action,
        res ~= nil and " ok" or (" failed: " .. tostring(err)), "\n")
      errout:flush()
    end,
  }
  ibkr.run(co, { duration = o.duration })
  if coroutine.status(co) ~= "dead" then coroutine.close(co) end
  local code = last == "ready" and 0 or (last == "down" and 2 or 1)
  return nil, nil, code
end

-- main(argv [, io_]) -> exit code. io_ = {stdout=, stderr=} (for tests; default io).
function M.main(argv, io_)
  io_ = io_ or { stdout = io.stdout, stderr = io.stderr }
  local o, msg = M.parse(argv or {})
  if not o then return usage_error(io_, msg) end
  if o.help or o.h then
    io_.stdout:write(M.USAGE)
    return 0
  end
  local opts = { base_url = o.url, timeout = o.timeout, ca_file = o.cacert }
  if o.insecure then opts.verify = false end
  if o.timeout and o.timeout < 3 then opts.connect_timeout = o.timeout end
  if o["oauth-config"] then -- [oauth] ibkr/oauth.lua reads the file (and its base_url)
    local cerr = require("ibkr.oauth").cli_apply(opts, o["oauth-config"])
    if cerr then return usage_error(io_, cerr) end
  end
  local ok, s = pcall(ibkr.new, opts)
  if not ok then return usage_error(io_, tostring(s):gsub("^[^:]*:%d+: ", "")) end
  local doc, human, code, err = RUN[o.command](s, o, io_)
  if doc then
    if o.json then
      io_.stdout:write(encode(doc), "\n")
    elseif human then
      io_.stdout:write(human, "\n")
    end
    if err and not o.json then io_.stderr:write("ibkr-session: ", tostring(err), "\n") end
  end
  s:close()
  return code
end

return M
