-- ibkr.mock: a mock IBKR Client Portal Gateway (the `ibkr-mock-gateway` command).
--   mock.new(opts)  -> instance with .url, .root, :step(max_wait), :run(), :close()
--   mock.serve(opts) serves until stopped (blocking); mock.main(argv) is the command line.
-- Pure Lua on luasocket (+ luasec for TLS) and lua-cjson; luv, when installed, is used only to
-- catch SIGTERM/SIGINT for a graceful exit.
local server_mod = require("ibkr.mock.server")
local gateway_mod = require("ibkr.mock.gateway")
local control = require("ibkr.mock.control")
local tls_mod = require("ibkr.mock.tls")

local mock = {}

mock._VERSION = "0.1.0"

mock.usage = [[
Usage: ibkr-mock-gateway [options]

A mock of the IBKR Client Portal Gateway (session endpoints under /v1/api, control API under
/__mock/). Prints its base URL as the first line of stdout, then serves until SIGINT/SIGTERM
or POST /__mock/shutdown.

Options:
  --host HOST            address to listen on (default 127.0.0.1)
  --port N               port (default 0: an ephemeral port)
  --tls | --no-tls       HTTPS (default) or plain HTTP
  --cert FILE --key FILE PEM certificate and key (default: a self-signed one made with openssl)
  --state STATE          ready | unauthenticated | disconnected | competing | no_session (default ready)
  --idle-timeout S       seconds without API request before the session drops to
                         unauthenticated (default 300; 0 = never)
  --init-delay S         seconds from ssodh/init to ready (default 0.5)
  --reauth-delay S       seconds from reauthenticate to ready (default 0.5)
  --no-pacing            never answer 429
  --head-timeout S       seconds to complete a request head (default 5)
  --keepalive-timeout S  idle keep-alive connections are closed after S seconds (default 120)
  --parent-pid PID       exit when process PID is gone (for test harnesses)
  --oauth                OAuth 1.0a mode (docs/oauth.md): a generated test consumer, every API
                         request's signature checked (401 when bad); state starts unauthenticated.
                         Its config file (the CLI's --oauth-config) is named on stderr and by
                         GET /__mock/oauth
  --oauth-dir DIR        where the test consumer's files go (default: a private temporary dir)
  --oauth-lst-ttl S      seconds a live session token lives (default 86400)
  -v, --verbose          log connections and requests to stderr
  -h, --help             this text
  --version              print the version
]]

local function read_pid()
  local f = io.open("/proc/self/stat", "r")
  if not f then
    return nil
  end
  local line = f:read("l")
  f:close()
  return math.tointeger(tonumber(line and line:match("^(%d+)")))
end

local function format_host(host)
  if host:find(":", 1, true) then
    return "[" .. host .. "]"
  end
  return host
end

-- opts: host, port, tls (default true), cert, key, state, config (gateway config overrides:
-- pacing, idle_timeout, init_delay, reauth_delay...), server (server overrides: head_timeout...),
-- verbose. Returns an instance or nil, err.
function mock.new(opts)
  opts = opts or {}
  local state = opts.state or "ready"
  if not gateway_mod.states[state] then
    return nil, "unknown state: " .. tostring(state)
  end
  local m = { tls = opts.tls ~= false, verbose = opts.verbose and true or false }
  local ctx, err
  if m.tls then
    if opts.cert or opts.key then
      if not (opts.cert and opts.key) then
        return nil, "--cert and --key go together"
      end
      ctx, err = tls_mod.context(opts.cert, opts.key)
    else
      ctx, err = tls_mod.self_signed(opts.openssl)
    end
    if not ctx then
      return nil, err
    end
  end
  local function log(fmt, ...)
    if m.verbose then
      io.stderr:write("ibkr-mock-gateway: ", string.format(fmt, ...), "\n")
    end
  end
  function m.set_verbose(v)
    m.verbose = v
  end
  local sopts = { host = opts.host or "127.0.0.1", port = opts.port or 0, ssl_context = ctx, log = log }
  for k, v in pairs(opts.server or {}) do
    sopts[k] = v
  end
  sopts.handler = function(req)
    if req.path == "/__mock/oauth" and m.oauth then return m.oauth:handle(req, m.tls) end -- [oauth]
    if req.path == "/__mock" or req.path:sub(1, 8) == "/__mock/" then
      return control.handle(m, req)
    end
    log("conn %d: %s %s", req.conn_id, req.method, req.target)
    local refused = m.oauth and m.oauth:handle(req, m.tls) -- [oauth] ibkr/mock/oauth.lua
    if refused then return refused end
    return m.gateway:handle(req)
  end
  local srv
  srv, err = server_mod.new(sopts)
  if not srv then
    return nil, err
  end
  m.server = srv
  m.root = (m.tls and "https" or "http") .. "://" .. format_host(srv.address) .. ":" .. srv.port
  m.url = m.root .. "/v1/api"
  m.port = srv.port
  m.pid = read_pid()
  m.gateway = gateway_mod.new({ state = state, config = opts.config, clock = srv.clock, root = m.root })
  if opts.oauth then -- [oauth] OAuth 1.0a mode (ibkr/mock/oauth.lua)
    local _, oerr = require("ibkr.mock.oauth").attach(m, { oauth = opts.oauth, state = opts.state })
    if oerr then srv:close(); return nil, oerr end
  end
  local initial_server = {}
  for k in pairs(server_mod.defaults) do
    initial_server[k] = srv[k]
  end
  local initial_verbose = m.verbose
  function m.reset()
    for k, v in pairs(initial_server) do
      srv[k] = v
    end
    m.verbose = initial_verbose
    m.gateway:reset()
  end
  function m.step(max_wait)
    srv:step(max_wait)
    if m.shutdown_requested then
      srv:stop()
    end
    return not srv.stopping
  end
  function m.stop()
    srv:stop()
  end
  function m.run(max_wait)
    while m.step(max_wait) do
    end
    srv:close()
    return true
  end
  function m.close()
    srv:close()
  end
  return m
end

-- Serves until stopped (POST /__mock/shutdown). Returns true, or nil, err.
function mock.serve(opts)
  local m, err = mock.new(opts)
  if not m then
    return nil, err
  end
  if opts and opts.on_ready then
    opts.on_ready(m)
  end
  return m.run()
end

---------------------------------------------------------------------------------------------
-- Command line

local function parse_number(name, v, integer)
  local n = tonumber(v)
  if not n or n ~= n or n < 0 or n == math.huge or (integer and math.floor(n) ~= n) then
    return nil, string.format("%s needs a non-negative %s, got %s", name,
      integer and "integer" or "number", tostring(v))
  end
  return integer and math.tointeger(n) or n
end

-- Returns an options table, or nil and a usage error; or "help"/"version".
function mock.parse_args(argv)
  local opts = { config = {}, server = {} }
  local i = 1
  local function value(name, inline)
    if inline then
      return inline
    end
    i = i + 1
    local v = argv[i]
    if v == nil then
      error({ usage = name .. " needs a value" })
    end
    return v
  end
  local function num(name, inline, integer)
    local n, err = parse_number(name, value(name, inline), integer)
    if not n then
      error({ usage = err })
    end
    return n
  end
  local ok, err = pcall(function()
    while argv[i] ~= nil do
      local a = argv[i]
      local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
      name = name or a
      if name == "-h" or name == "--help" then
        opts.help = true
      elseif name == "--version" then
        opts.version = true
      elseif name == "--host" then
        opts.host = value(name, inline)
      elseif name == "--port" then
        opts.port = num(name, inline, true)
        if opts.port > 65535 then
          error({ usage = "--port must be at most 65535" })
        end
      elseif name == "--tls" then
        opts.tls = true
      elseif name == "--no-tls" then
        opts.tls = false
      elseif name == "--cert" then
        opts.cert = value(name, inline)
      elseif name == "--key" then
        opts.key = value(name, inline)
      elseif name == "--state" then
        opts.state = value(name, inline)
        if not gateway_mod.states[opts.state] then
          error({ usage = "--state must be one of ready, unauthenticated, disconnected, "
            .. "competing, no_session" })
        end
      elseif name == "--idle-timeout" then
        opts.config.idle_timeout = num(name, inline)
      elseif name == "--init-delay" then
        opts.config.init_delay = num(name, inline)
      elseif name == "--reauth-delay" then
        opts.config.reauth_delay = num(name, inline)
      elseif name == "--no-pacing" then
        opts.config.pacing = false
      elseif name == "--pacing" then
        opts.config.pacing = true
      elseif name == "--head-timeout" then
        opts.server.head_timeout = num(name, inline)
      elseif name == "--keepalive-timeout" then
        opts.server.keepalive_timeout = num(name, inline)
      elseif name == "--parent-pid" then
        opts.parent_pid = num(name, inline, true)
      elseif name == "--oauth" then -- [oauth]
        opts.oauth = opts.oauth or {}
      elseif name == "--oauth-dir" or name == "--oauth-lst-ttl" then -- [oauth]
        opts.oauth = opts.oauth or {}
        if name == "--oauth-dir" then
          opts.oauth.dir = value(name, inline)
        else
          opts.oauth.lst_ttl = num(name, inline)
        end
      elseif name == "-v" or name == "--verbose" then
        opts.verbose = true
      elseif name == "--quiet" or name == "-q" then
        opts.verbose = false
      else
        error({ usage = "unknown option: " .. a })
      end
      i = i + 1
    end
  end)
  if not ok then
    if type(err) == "table" and err.usage then
      return nil, err.usage
    end
    error(err, 0)
  end
  if opts.tls == false and (opts.cert or opts.key) then
    return nil, "--cert/--key make no sense with --no-tls"
  end
  if (opts.cert ~= nil) ~= (opts.key ~= nil) then
    return nil, "--cert and --key go together"
  end
  for _, k in ipairs({ "head_timeout", "keepalive_timeout" }) do
    if opts.server[k] == 0 then
      return nil, "--" .. k:gsub("_", "-") .. " must be positive"
    end
  end
  return opts
end

-- SIGTERM/SIGINT through luv when it is installed: its loop's backend fd is watched by our
-- select loop, so a signal wakes the loop at once. Without luv the default action (terminate)
-- applies, which is also clean here: no child process, no temporary file, the port is freed.
local function catch_signals(m)
  local ok, uv = pcall(require, "luv")
  if not ok or type(uv.new_signal) ~= "function" or type(uv.backend_fd) ~= "function" then
    return false
  end
  local stop = function()
    m.stop()
  end
  for _, name in ipairs({ "sigterm", "sigint" }) do
    local h = uv.new_signal()
    uv.signal_start(h, name, stop)
  end
  uv.run("nowait")
  local fd = uv.backend_fd()
  if not fd then
    return false
  end
  local waker = { getfd = function() return fd end }
  m.server:add_waker(waker, function()
    uv.run("nowait")
  end)
  return true
end

local function parent_alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then
    return false
  end
  local line = f:read("l") or ""
  f:close()
  return not line:match("^%d+ %b() Z")
end

-- Returns an exit code: 0 after a clean stop, 64 on usage errors, 1 on runtime failure.
function mock.main(argv)
  local opts, err = mock.parse_args(argv or {})
  if not opts then
    io.stderr:write("ibkr-mock-gateway: ", err, "\n", "Try 'ibkr-mock-gateway --help'.\n")
    return 64
  end
  if opts.help then
    io.stdout:write(mock.usage)
    return 0
  end
  if opts.version then
    io.stdout:write("ibkr-mock-gateway ", mock._VERSION, "\n")
    return 0
  end
  local m
  m, err = mock.new(opts)
  if not m then
    io.stderr:write("ibkr-mock-gateway: ", err, "\n")
    return 1
  end
  catch_signals(m)
  io.stdout:write(m.url, "\n")
  io.stdout:flush()
  if m.oauth then -- [oauth]
    io.stderr:write("ibkr-mock-gateway: OAuth test consumer: ", m.oauth.config_file, "\n")
  end
  if m.verbose then
    io.stderr:write("ibkr-mock-gateway: serving ", m.url, " (pid ", tostring(m.pid), ")\n")
  end
  local check_at = 0
  while m.step(1) do
    if opts.parent_pid then
      local now = m.server.clock()
      if now >= check_at then
        check_at = now + 1
        if not parent_alive(opts.parent_pid) then
          m.stop()
        end
      end
    end
  end
  m.close()
  if m.oauth then m.oauth:close() end -- [oauth] removes the test consumer's temporary directory
  if m.verbose then
    io.stderr:write("ibkr-mock-gateway: stopped\n")
  end
  return 0
end

return mock
