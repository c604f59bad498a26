-- ibkr.mock: a mock IBKR Client Portal Gateway (the `ibkr-mock-gateway` command), in process.
--   local m = mock.new(opts)  -- raises on a bad option; nil, err when it cannot listen
--   m.url, m.root, m.port, m.tls, m.pid
--   m:step(max_wait) -> true while serving; m:run(); m:stop(); m:close(); m:reset()
--   m:control(method, path, body) -> the control API in process
--   mock.serve(opts) serves until POST /__mock/shutdown; mock.main(argv) is the command line.
-- The reference is docs/testing.md. Pure Lua on luasocket (+ luasec for TLS), lua-cjson and
-- lua-zlib; luv, when installed, is used only to catch SIGTERM/SIGINT for a graceful exit.
local server_mod = require("ibkr.mock.net.server")
local gateway_mod = require("ibkr.mock.gateway")
local control = require("ibkr.mock.control")
local tls_mod = require("ibkr.mock.net.tls")
local json = require("ibkr.mock.json")

local mock = {}

mock._VERSION = require("ibkr.version")
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
  --oauth-dir DIR        where the test consumer's files go (default: a private temporary dir);
                         never overwrites a file there: refuses to start instead
  --oauth-lst-ttl S      seconds a live session token lives (default 86400)
  --oauth2               OAuth 2.0 mode (docs/oauth.md): a generated test client, the token and
                         SSO session endpoints, every API request's bearer checked (401 when
                         bad); state starts unauthenticated. Its config file (the CLI's
                         --oauth2-config) is named on stderr and by GET /__mock/oauth2
  --oauth2-dir DIR       where the test client's files go (default: a private temporary dir);
                         an existing file there is never overwritten (the mock stops instead)
  --oauth2-token-ttl S   seconds an access token lives (default 3600)
  --oauth2-session-ttl S seconds an SSO session's bearer token lives (default 86400)
  --oauth2-key-bits N    the test client's RSA key size (default 3072)
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

-- The options of mock.new and their types. Gateway and server settings may also be given flat
-- (new{init_delay = 0}) instead of inside config = {} / server = {}.
local OPTIONS = {
  host = "string", port = "number", tls = "boolean", cert = "string", key = "string",
  state = "string", config = "table", server = "table", verbose = "boolean", openssl = "string",
  on_ready = "function", oauth = "table", oauth2 = "table",
}

-- Checks opts (raising on a programmer mistake) and returns the server and gateway settings.
local function check_options(opts)
  if type(opts) ~= "table" then
    error("ibkr.mock.new: options must be a table", 3)
  end
  local flat = {}
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if want == nil then
      if control.setting_kind(k) == nil then
        error("ibkr.mock.new: unknown option " .. tostring(k), 3)
      end
      flat[k] = v
    elseif type(v) ~= want then
      error(string.format("ibkr.mock.new: option %s must be a %s", k, want), 3)
    end
  end
  if opts.state ~= nil and not gateway_mod.states[opts.state] then
    error("ibkr.mock.new: unknown state " .. tostring(opts.state), 3)
  end
  if opts.port ~= nil and (math.type(opts.port) ~= "integer" or opts.port < 0 or opts.port > 65535) then
    error("ibkr.mock.new: port must be an integer in [0, 65535]", 3)
  end
  if (opts.cert ~= nil) ~= (opts.key ~= nil) then
    error("ibkr.mock.new: cert and key go together", 3)
  end
  local settings = {}
  for _, t in ipairs({ opts.config or {}, opts.server or {}, flat }) do
    for k, v in pairs(t) do
      settings[k] = v
    end
  end
  local ok, err = control.check_config(settings)
  if not ok then
    error("ibkr.mock.new: " .. err, 3)
  end
  return control.split_config(settings)
end

local Mock = {}
Mock.__index = Mock

local function tls_context(opts)
  if opts.tls == false then
    return nil
  end
  if opts.cert then
    return tls_mod.context(opts.cert, opts.key)
  end
  return tls_mod.self_signed(opts.openssl)
end

-- opts: host ("127.0.0.1"), port (0: a free one), tls (true), cert + key (PEM files; default a
-- fresh self-signed certificate), state ("ready"), config (gateway settings), server (server
-- settings), verbose; settings may also be given flat. Returns an instance, or nil, err when
-- it cannot start (port taken, bad certificate). Raises on unknown or ill-typed options.
function mock.new(opts)
  opts = opts or {}
  local gconfig, sconfig = check_options(opts)
  local m = setmetatable({ tls = opts.tls ~= false, verbose = opts.verbose or false }, Mock)
  local ctx, err = tls_context(opts)
  if m.tls and not ctx then
    return nil, err
  end
  local sopts = { host = opts.host or "127.0.0.1", port = opts.port or 0, ssl_context = ctx }
  for k, v in pairs(sconfig) do
    sopts[k] = v
  end
  sopts.log = function(fmt, ...)
    if m.verbose then
      io.stderr:write("ibkr-mock-gateway: ", string.format(fmt, ...), "\n")
    end
  end
  sopts.handler = function(req)
    if req.path == "/__mock/oauth" and m.oauth then
      return m.oauth:handle(req, m.tls)
    end
    if req.path == "/__mock/oauth2" and m.oauth2 then
      return m.oauth2:handle(req)
    end
    if req.path == "/__mock" or req.path:sub(1, 8) == "/__mock/" then
      return control.handle(m, req)
    end
    sopts.log("conn %d: %s %s", req.conn_id, req.method, req.target)
    -- a bad OAuth signature or bearer: 401; OAuth 2.0's token endpoints answer themselves
    local refused = m.oauth and m.oauth:handle(req, m.tls) or m.oauth2 and m.oauth2:handle(req)
    return refused or m.gateway:handle(req)
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
  m.gateway = gateway_mod.new({ state = opts.state or "ready", config = gconfig, clock = srv.clock,
    root = m.root })
  -- OAuth 1.0a and 2.0 modes (ibkr.mock.oauth, ibkr.mock.oauth2; docs/oauth.md)
  for _, mode in ipairs({ "oauth", "oauth2" }) do
    if opts[mode] then
      local found, mod = pcall(require, "ibkr.mock." .. mode)
      local oerr = not found and "OAuth mode needs the module ibkr.mock." .. mode .. ": " .. tostring(mod)
      if found then
        oerr = select(2, mod.attach(m, { [mode] = opts[mode], state = opts.state }))
      end
      if oerr then
        srv:close()
        return nil, oerr
      end
    end
  end
  m.initial_server = {}
  for k in pairs(server_mod.defaults) do
    m.initial_server[k] = srv[k]
  end
  m.initial_verbose = m.verbose
  return m
end

function Mock:set_verbose(v)
  self.verbose = v
end

-- Back to the start: start-up state and settings, empty log, no faults, no penalty box.
function Mock:reset()
  for k, v in pairs(self.initial_server) do
    self.server[k] = v
  end
  self.verbose = self.initial_verbose
  self.gateway:reset()
  self.server:release() -- no answer stays held by a fault the reset removed
end

-- Serves what is ready, waiting at most max_wait seconds (default 1). Returns true while serving,
-- false once stopped (m:stop(), POST /__mock/shutdown).
function Mock:step(max_wait)
  self.server:step(max_wait)
  if self.shutdown_requested then
    self.server:stop()
  end
  return not self.server.stopping
end

function Mock:stop()
  self.server:stop()
end

-- Serves until stopped, then closes. Returns true.
function Mock:run(max_wait)
  while self:step(max_wait) do
  end
  self:close()
  return true
end

-- Closes every connection and the listening socket; idempotent.
function Mock:close()
  self.server:close()
end

-- A control request served in process, as over HTTP (docs/testing.md, the control API): e.g.
-- m:control("POST", "/__mock/fault", {kind = "empty"}). Returns the decoded answer and its status;
-- raises unless the status is 200 (a test wants loud failures).
function Mock:control(method, path, body)
  local req = { method = method, path = path, query = "", headers = {}, minor = 1,
    body = body ~= nil and json.encode(body) or "" }
  local resp = control.handle(self, req)
  local value = json.decode(resp.body)
  if resp.status ~= 200 then
    error(string.format("ibkr.mock: %s %s: %d %s", method, path, resp.status, resp.body), 2)
  end
  return value, resp.status
end

Mock.__close = Mock.close
Mock.__gc = Mock.close

-- Serves until stopped (POST /__mock/shutdown). Returns true, or nil, err.
function mock.serve(opts)
  local m, err = mock.new(opts)
  if not m then
    return nil, err
  end
  if opts and opts.on_ready then
    opts.on_ready(m)
  end
  return m:run()
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

local STATES = "ready, unauthenticated, disconnected, competing, no_session"

local function usage(msg)
  error({ usage = msg }, 0)
end

local function number(name, v, integer)
  local n, err = parse_number(name, v, integer)
  if not n then
    usage(err)
  end
  return n
end

local function oauth_opts(o)
  o.oauth = o.oauth or {}
  return o.oauth
end

local function oauth2_opts(o)
  o.oauth2 = o.oauth2 or {}
  return o.oauth2
end

-- Options without a value, and options with one: name -> function(opts[, value, name]).
local FLAGS = {
  ["-h"] = function(o) o.help = true end, ["--help"] = function(o) o.help = true end,
  ["--version"] = function(o) o.version = true end,
  ["--tls"] = function(o) o.tls = true end, ["--no-tls"] = function(o) o.tls = false end,
  ["--pacing"] = function(o) o.config.pacing = true end,
  ["--no-pacing"] = function(o) o.config.pacing = false end,
  ["-v"] = function(o) o.verbose = true end, ["--verbose"] = function(o) o.verbose = true end,
  ["-q"] = function(o) o.verbose = false end, ["--quiet"] = function(o) o.verbose = false end,
  ["--oauth"] = oauth_opts,
  ["--oauth2"] = oauth2_opts,
}
local VALUED = {
  ["--host"] = function(o, v) o.host = v end,
  ["--port"] = function(o, v, name)
    o.port = number(name, v, true)
    if o.port > 65535 then
      usage("--port must be at most 65535")
    end
  end,
  ["--cert"] = function(o, v) o.cert = v end,
  ["--key"] = function(o, v) o.key = v end,
  ["--state"] = function(o, v)
    if not gateway_mod.states[v] then
      usage("--state must be one of " .. STATES)
    end
    o.state = v
  end,
  ["--idle-timeout"] = function(o, v, name) o.config.idle_timeout = number(name, v) end,
  ["--init-delay"] = function(o, v, name) o.config.init_delay = number(name, v) end,
  ["--reauth-delay"] = function(o, v, name) o.config.reauth_delay = number(name, v) end,
  ["--head-timeout"] = function(o, v, name) o.server.head_timeout = number(name, v) end,
  ["--keepalive-timeout"] = function(o, v, name) o.server.keepalive_timeout = number(name, v) end,
  ["--parent-pid"] = function(o, v, name) o.parent_pid = number(name, v, true) end,
  ["--oauth-dir"] = function(o, v) oauth_opts(o).dir = v end,
  ["--oauth-lst-ttl"] = function(o, v, name) oauth_opts(o).lst_ttl = number(name, v) end,
  ["--oauth2-dir"] = function(o, v) oauth2_opts(o).dir = v end,
  ["--oauth2-token-ttl"] = function(o, v, name) oauth2_opts(o).token_ttl = number(name, v) end,
  ["--oauth2-session-ttl"] = function(o, v, name) oauth2_opts(o).session_ttl = number(name, v) end,
  ["--oauth2-key-bits"] = function(o, v, name)
    local bits = number(name, v, true)
    if bits < 2048 or bits > 8192 then usage(name .. " must be in [2048, 8192]") end
    oauth2_opts(o).key_bits = bits
  end,
}

local function parse_argv(argv, opts)
  local i = 1
  while argv[i] ~= nil do
    local a = argv[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    if FLAGS[name] and not inline then
      FLAGS[name](opts)
    elseif VALUED[name] then
      local v = inline
      if v == nil then
        i = i + 1
        v = argv[i]
      end
      if v == nil then
        usage(name .. " needs a value")
      end
      VALUED[name](opts, v, name)
    else
      usage("unknown option: " .. a)
    end
    i = i + 1
  end
end

-- Returns an options table (help = true or version = true when asked), or nil and a usage error.
function mock.parse_args(argv)
  local opts = { config = {}, server = {} }
  local ok, err = pcall(parse_argv, argv, opts)
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
  if opts.oauth and opts.oauth2 then
    return nil, "--oauth and --oauth2 exclude each other"
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
    m:stop()
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

local parent_alive = require("ibkr.mock.proc").alive

-- Serves until stopped, or until process parent_pid (when given) is gone; then closes. Steps of
-- at most 0.4 s and a look at the parent every 0.4 s: gone within a second of it (docs/testing.md).
local PARENT_CHECK = 0.4
local function serve(m, parent_pid)
  local check_at = 0
  while m:step(parent_pid and PARENT_CHECK or 1) do
    if parent_pid then
      local now = m.server.clock()
      if now >= check_at then
        check_at = now + PARENT_CHECK
        if not parent_alive(parent_pid) then
          m:stop()
        end
      end
    end
  end
  m:close()
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
  m, err = mock.new({ host = opts.host, port = opts.port, tls = opts.tls, cert = opts.cert, key = opts.key,
    state = opts.state, config = opts.config, server = opts.server, verbose = opts.verbose,
    oauth = opts.oauth, oauth2 = opts.oauth2 })
  if not m then
    io.stderr:write("ibkr-mock-gateway: ", err, "\n")
    return 1
  end
  catch_signals(m)
  io.stdout:write(m.url, "\n")
  io.stdout:flush()
  if m.oauth then
    io.stderr:write("ibkr-mock-gateway: OAuth test consumer: ", m.oauth.config_file, "\n")
  end
  if m.oauth2 then
    io.stderr:write("ibkr-mock-gateway: OAuth 2.0 test client: ", m.oauth2.config_file, "\n")
  end
  if m.verbose then
    io.stderr:write("ibkr-mock-gateway: serving ", m.url, " (pid ", tostring(m.pid), ")\n")
  end
  serve(m, opts.parent_pid)
  for _, mode in ipairs({ "oauth", "oauth2" }) do
    if m[mode] then
      m[mode]:close() -- removes the test consumer's (client's) temporary directory
    end
  end
  if m.verbose then
    io.stderr:write("ibkr-mock-gateway: stopped\n")
  end
  return 0
end

return mock
