-- ibkr-session's command line: the usage text and the option parser (no I/O, no session).

local M = {}

M.USAGE = [[
usage: ibkr-session [--url URL] [-k|--insecure | --cacert FILE] [--timeout S] [--retries N]
                    [--proxy URL] [--oauth-config FILE | --oauth2-config FILE] [--json]
                    COMMAND [command options]
       ibkr-session --version | -h | --help
commands:
  status                  brokerage session state (exit 0 only when ready)
  tickle                  POST /tickle: keeps the session alive, prints its state
  validate                GET /sso/validate: the SSO session (exit 0 when RESULT is true)
  init [--compete]        POST /iserver/auth/ssodh/init: open the brokerage session; exit 0 when
                          the gateway accepted it (ready, or pending: the gateway needs ~0.5-15 s;
                          follow with `ibkr-session wait`)
  wait [--init] [--compete]
                          poll until the session is ready (exit 0), at most --timeout (default
                          60 s); --init re-initialises an unauthenticated session meanwhile
  reauthenticate          POST /iserver/reauthenticate (asynchronous: ready up to ~15 s later)
  logout                  POST /logout (ends the session; a browser login is needed afterwards)
  request METHOD PATH [--data JSON]
                          any call: PATH below the base URL (e.g. /iserver/accounts); prints
                          the JSON answer
  keepalive [--interval S] [--retry-interval S] [--validate-interval S] [--no-init]
            [--compete] [--duration S] [--listen [HOST:]PORT] [--on-change CMD]
            [--on-change-timeout S]
                          keep the session alive: tickle every --interval (60 s), repair when
                          not ready (every --retry-interval, 5 s); one line per state change;
                          runs until SIGINT/SIGTERM or --duration. --no-init: tickle only, never
                          ssodh/init (accounts that keep only the SSO session); --compete: take
                          a competing session over; --validate-interval: GET /sso/validate too;
                          --listen: serve /livez, /readyz and /metrics (127.0.0.1 unless HOST);
                          --on-change: run `/bin/sh -c CMD` on every state change (IBKR_STATE,
                          IBKR_PREVIOUS_STATE, IBKR_DETAIL, IBKR_URL), killed after
                          --on-change-timeout (30 s)
options:
  --url URL         gateway base URL (default: $IBKR_BASE_URL, else https://localhost:5000/v1/api)
  -k, --insecure    do not verify the TLS certificate
  --cacert FILE     verify the TLS certificate against this PEM file (the gateway's certificate)
  --timeout S       seconds the whole command may take, retries included (default 25; wait: 60;
                    keepalive: the bound of each call)
  --retries N       retries of a failed call (connect, timeout, dropped connection, 429, 503)
  --proxy URL       send the requests through this proxy (environment proxies are never used
                    for a loopback gateway)
  --oauth-config FILE  a headless OAuth 1.0a session instead of a gateway (docs/oauth.md)
  --oauth2-config FILE a headless OAuth 2.0 session (institutional accounts; docs/oauth.md)
  --json            every line printed is one JSON object (results, errors, state changes)
  --version         print the version
exit codes:
  0   success (status/wait: the session is ready)
  1   the gateway answered, but the session is not ready or the call failed (HTTP error,
      or an answer that says it failed, e.g. {"error": ...} or RESULT false)
  2   the gateway is unreachable: connection refused, timeout, TLS refused
  3   login required: there is no session; log in with a browser at the gateway's root URL
  64  usage error (bad option, bad URL, bad $IBKR_BASE_URL)
  130, 143  ended by SIGINT, SIGTERM
]]

M.COMMANDS = {
  status = true, tickle = true, validate = true, init = true, wait = true, reauthenticate = true,
  logout = true, request = true, keepalive = true,
}

-- option -> { value = takes a value?, only = commands it applies to (nil: every command),
-- key = name in the parsed table (default: the long name without dashes, "-" -> "_") }
-- A new global option is one line here plus its use in ibkr/cli.lua (session_options).
local KEEPALIVE = { keepalive = true }
M.OPTIONS = {
  ["--url"] = { value = true }, ["--cacert"] = { value = true },
  ["--timeout"] = { value = true }, ["--retries"] = { value = true },
  ["--proxy"] = { value = true }, ["--oauth-config"] = { value = true },
  ["--oauth2-config"] = { value = true },
  ["--insecure"] = {}, ["-k"] = { key = "insecure" },
  ["--json"] = {}, ["--help"] = { key = "help" }, ["-h"] = { key = "help" }, ["--version"] = {},
  ["--compete"] = { only = { init = true, wait = true, keepalive = true } },
  ["--init"] = { only = { wait = true } },
  ["--data"] = { value = true, only = { request = true } },
  ["--interval"] = { value = true, only = KEEPALIVE },
  ["--retry-interval"] = { value = true, only = KEEPALIVE },
  ["--validate-interval"] = { value = true, only = KEEPALIVE },
  ["--no-init"] = { only = KEEPALIVE },
  ["--duration"] = { value = true, only = KEEPALIVE },
  ["--listen"] = { value = true, only = KEEPALIVE },
  ["--on-change"] = { value = true, only = KEEPALIVE },
  ["--on-change-timeout"] = { value = true, only = KEEPALIVE },
}

local SECONDS = {
  "timeout", "interval", "retry_interval", "validate_interval", "duration", "on_change_timeout",
}

local function key_of(name, spec)
  return spec.key or name:gsub("^%-+", ""):gsub("-", "_")
end

-- One option at argv[i]; returns the next index, or nil, message.
local function take_option(argv, i, o)
  local a = argv[i]
  local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
  name = name or a
  local spec = M.OPTIONS[name]
  if not spec then return nil, "unknown option " .. a end
  local v = true
  if spec.value then
    if inline then
      v = inline
    else
      i = i + 1
      v = argv[i]
      if v == nil then return nil, "option " .. name .. " needs a value" end
    end
  elseif inline then
    return nil, "option " .. name .. " takes no value"
  end
  o[key_of(name, spec)] = v
  o._seen[#o._seen + 1] = name
  return i + 1
end

local function check_numbers(o)
  for _, k in ipairs(SECONDS) do
    if o[k] ~= nil then
      local n = tonumber(o[k])
      if not n or n ~= n or n <= 0 or n == math.huge then
        return nil, "--" .. k:gsub("_", "-") .. " needs a positive number of seconds"
      end
      o[k] = n
    end
  end
  if o.retries ~= nil then
    local n = math.tointeger(tonumber(o.retries))
    if not n or n < 0 or n > 100 then return nil, "--retries needs a whole number from 0 to 100" end
    o.retries = n
  end
  return o
end

-- Checks what only makes sense together; returns o or nil, message.
local function check_combination(o)
  for _, name in ipairs(o._seen) do
    local spec = M.OPTIONS[name]
    if spec.only and not spec.only[o.command] then
      return nil, "option " .. name .. " does not apply to " .. o.command
    end
  end
  if o.insecure and o.cacert then return nil, "--insecure and --cacert exclude each other" end
  if o.command == "request" then
    if #o.args ~= 2 then return nil, "request needs METHOD and PATH (e.g. request GET /iserver/accounts)" end
    if not o.args[1]:match("^%a+$") then return nil, "request: METHOD must be a name such as GET" end
    if o.args[2]:sub(1, 1) ~= "/" then return nil, "request: PATH must start with /" end
    local m = o.args[1]:upper()
    if o.data ~= nil and (m == "GET" or m == "HEAD") then
      return nil, "request: --data is for methods with a body (POST, PUT...), not " .. m
    end
  elseif #o.args > 0 then
    return nil, "unexpected argument " .. o.args[1]
  end
  if o.listen ~= nil then
    local host, port = require("ibkr.cli.listen").parse_address(o.listen)
    if not host then return nil, port end
    o.listen = { host = host, port = port, spec = o.listen }
  end
  if o.on_change == "" then return nil, "--on-change needs a command" end
  if o.on_change_timeout ~= nil and o.on_change == nil then
    return nil, "--on-change-timeout goes with --on-change"
  end
  return check_numbers(o)
end

-- Parses argv; returns the options table (o.command, o.args = the command's operands) or
-- nil, message on a usage error. --help/--version need no command.
function M.parse(argv)
  local o = { _seen = {}, args = {} }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a:sub(1, 1) == "-" and a ~= "-" and not (o.command == "request" and a:match("^%-%d")) then
      local nexti, msg = take_option(argv, i, o)
      if not nexti then return nil, msg end
      i = nexti
    else
      if not o.command then
        if not M.COMMANDS[a] then return nil, "unknown command " .. a end
        o.command = a
      else
        o.args[#o.args + 1] = a
      end
      i = i + 1
    end
  end
  if o.help or o.version then return o end
  if not o.command then return nil, "missing command" end
  return check_combination(o)
end

return M
