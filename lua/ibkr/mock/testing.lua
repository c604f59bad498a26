-- ibkr.mock.testing: the mock gateway for your own tests. Starts `ibkr-mock-gateway` as a child
-- process on a free port, drives its control API and stops it; its small HTTP/1.1 client (on
-- luasocket/luasec, never the library under test) also serves raw-protocol tests.
--
--   local testing = require("ibkr.mock.testing")
--   local gw = testing.start{ tls = true, state = "unauthenticated", pacing = false, init_delay = 0 }
--   gw.url, gw.root, gw.pid, gw.host, gw.port, gw.tls
--   gw:session{...}        -- an ibkr session on gw.url (options passed on)
--   gw:state(), gw:set_state("competing" | {state=..., <settings>...}), gw:config{...}
--   gw:fault{kind=..., path=..., ...}, gw:faults(), gw:clear_faults()
--   gw:penalty{seconds=600}, gw:clear_penalty()
--   gw:log(), gw:api_log(api), gw:clear_log(), gw:reset(), gw:login(state)
--   gw:stop()              -- also on garbage collection and at the end of a <close> scope
--   gw:request(method, path, opts), gw:connect(opts) -> raw client
--   gw.ws_url; gw:ws(), gw:ws_wait(pred, timeout), gw:ws_drop{code=, reason=}, gw:ws_heartbeats(on),
--   gw:ws_freeze(on), gw:ws_push(msg), gw:ws_push_raw(bytes), gw:ws_ping(data), gw:ws_greet(),
--   gw:ws_messages(), gw:ws_clear_messages()   -- the websocket /v1/api/ws
--   gw:oauth2([settings]), gw:oauth2_fault{...}, gw:oauth2_session{...}  (start{oauth2 = {}})
-- The reference is docs/testing.md.
local socket = require("socket")
local cjson = require("cjson")

local helper = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function own_pid()
  local f = io.open("/proc/self/stat", "r")
  if not f then
    return nil
  end
  local pid = f:read("l"):match("^(%d+)")
  f:close()
  return pid
end

local proc_state = require("ibkr.mock.proc").state

-- How the mock is started: `helper.command` (a shell command) when set, else $IBKR_MOCK_GATEWAY,
-- else this Lua (`helper.lua`, default $LUA or lua5.4) running ibkr.mock with this process's
-- package.path and package.cpath, so the child uses the same copy of the module as the test.
helper.lua = os.getenv("LUA") or "lua5.4"

local function default_command()
  local boot = string.format("package.path = %q; package.cpath = %q; "
    .. "os.exit(require('ibkr.mock').main(arg), true)", package.path, package.cpath)
  return shell_quote(helper.lua) .. " -e " .. shell_quote(boot) .. " -"
end

function helper.mock_command()
  return helper.command or os.getenv("IBKR_MOCK_GATEWAY") or default_command()
end

---------------------------------------------------------------------------------------------
-- A plain HTTP/1.1 client

local client = {}
client.__index = client

-- opts: host, port, tls (bool), timeout (seconds, default 5). Returns a client or nil, err.
function helper.connect(opts)
  local sock, err = socket.tcp()
  if not sock then
    return nil, err
  end
  sock:settimeout(opts.timeout or 5)
  local ok, cerr = sock:connect(opts.host, opts.port)
  if not ok then
    sock:close()
    return nil, "connect: " .. tostring(cerr)
  end
  sock:setoption("tcp-nodelay", true)
  if opts.tls then
    local ssl = require("ssl")
    local s, werr = ssl.wrap(sock, { mode = "client", protocol = "any", verify = "none", options = "all" })
    if not s then
      sock:close()
      return nil, "tls wrap: " .. tostring(werr)
    end
    s:settimeout(opts.timeout or 5)
    local hok, herr = s:dohandshake()
    if not hok then
      s:close()
      return nil, "tls handshake: " .. tostring(herr)
    end
    sock = s
  end
  return setmetatable({ sock = sock, host = opts.host, port = opts.port, tls = opts.tls }, client)
end

function client:settimeout(t)
  self.sock:settimeout(t)
end

-- Sends raw bytes. Returns true or nil, err.
function client:send(data)
  local last, err = self.sock:send(data)
  if not last then
    return nil, err
  end
  return true
end

-- Formats a request. opts: headers (list of {name, value} or map), body (string), close (bool),
-- no_host (bool).
function helper.format_request(method, target, opts, hostport)
  opts = opts or {}
  local lines = { method .. " " .. target .. " HTTP/1.1" }
  if not opts.no_host then
    lines[#lines + 1] = "Host: " .. hostport
  end
  local h = opts.headers or {}
  if h[1] then
    for _, hv in ipairs(h) do
      lines[#lines + 1] = hv[1] .. ": " .. hv[2]
    end
  else
    local names = {}
    for k in pairs(h) do
      names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do
      lines[#lines + 1] = k .. ": " .. h[k]
    end
  end
  if opts.body and not opts.no_length then
    lines[#lines + 1] = "Content-Length: " .. #opts.body
  end
  if opts.close then
    lines[#lines + 1] = "Connection: close"
  end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or "")
end

local function read_head(sock)
  local status_line, err = sock:receive("*l")
  if not status_line then
    return nil, err
  end
  local version, status, reason = status_line:match("^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
  if not status then
    return nil, "bad status line: " .. status_line
  end
  local headers, list = {}, {}
  while true do
    local line, lerr = sock:receive("*l")
    if not line then
      return nil, lerr
    end
    if line == "" then
      break
    end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if not name then
      return nil, "bad header line: " .. line
    end
    list[#list + 1] = { name, value }
    local l = name:lower()
    headers[l] = headers[l] and (headers[l] .. ", " .. value) or value
  end
  return {
    version = version, status = tonumber(status), reason = reason, headers = headers, header_list = list,
  }
end

-- Reads one response (skipping 1xx unless opts.keep_1xx). opts.head_only for HEAD requests.
-- Returns {status, reason, headers (lowercased map), header_list, body, chunks} or nil, err, partial.
function client:read_response(opts)
  opts = opts or {}
  local sock = self.sock
  local resp, err
  repeat
    resp, err = read_head(sock)
    if not resp then
      return nil, err
    end
  until resp.status >= 200 or opts.keep_1xx
  local h = resp.headers
  if opts.head_only or resp.status < 200 or resp.status == 204 or resp.status == 304 then
    resp.body = ""
    return resp
  end
  if (h["transfer-encoding"] or ""):lower() == "chunked" then
    local parts = {}
    resp.chunks = 0
    while true do
      local line, lerr = sock:receive("*l")
      if not line then
        return nil, lerr, table.concat(parts)
      end
      local size = tonumber(line:match("^(%x+)"), 16)
      if not size then
        return nil, "bad chunk size: " .. line
      end
      if size == 0 then
        repeat
          line = sock:receive("*l")
        until not line or line == ""
        break
      end
      local data, derr, partial = sock:receive(size)
      if not data then
        return nil, derr, table.concat(parts) .. (partial or "")
      end
      parts[#parts + 1] = data
      resp.chunks = resp.chunks + 1
      sock:receive("*l")
    end
    resp.body = table.concat(parts)
  elseif h["content-length"] then
    local n = tonumber(h["content-length"])
    if n == 0 then
      resp.body = ""
      return resp
    end
    local data, derr, partial = sock:receive(n)
    if not data then
      resp.body = partial
      return nil, derr, partial, resp
    end
    resp.body = data
  else
    local data, derr, partial = sock:receive("*a")
    resp.body = data or partial
    if not data then
      return nil, derr, partial, resp
    end
  end
  return resp
end

-- One request/response on this connection. path is from the server root.
function client:request(method, path, opts)
  opts = opts or {}
  local ok, err = self:send(helper.format_request(method, path, opts, self.host .. ":" .. self.port))
  if not ok then
    return nil, err
  end
  return self:read_response({ head_only = method == "HEAD" })
end

-- True when the peer has closed the connection (reads EOF within timeout seconds).
function client:is_closed(timeout)
  self.sock:settimeout(timeout or 2)
  local data, err, partial = self.sock:receive(1)
  if data or (partial and #partial > 0) then
    return false, "got data"
  end
  return err == "closed", err
end

function client:close()
  self.sock:close()
end

---------------------------------------------------------------------------------------------
-- The mock process

local proc = {}
proc.__index = proc

local function add_arg(list, ...)
  for _, a in ipairs({ ... }) do
    list[#list + 1] = shell_quote(a)
  end
end

local START_OPTIONS = {
  tls = "boolean", state = "string", pacing = "boolean", idle_timeout = "number", init_delay = "number",
  reauth_delay = "number", head_timeout = "number", keepalive_timeout = "number", verbose = "boolean",
  args = "table", parent_pid = "boolean", config = "table", ws_heartbeat = "number",
  ws_greeting_delay = "number", oauth2 = "table",
}

local function check_start_options(opts)
  for k, v in pairs(opts) do
    local want = START_OPTIONS[k]
    if not want then
      error("ibkr.mock.testing.start: unknown option " .. tostring(k), 3)
    end
    if type(v) ~= want then
      error(string.format("ibkr.mock.testing.start: option %s must be a %s", k, want), 3)
    end
  end
end

local function start_args(opts)
  local args = {}
  add_arg(args, "--port", "0")
  if opts.tls == false then
    add_arg(args, "--no-tls")
  end
  if opts.state then
    add_arg(args, "--state", opts.state)
  end
  if opts.pacing == false then
    add_arg(args, "--no-pacing")
  end
  for _, k in ipairs({ "idle_timeout", "init_delay", "reauth_delay", "head_timeout", "keepalive_timeout",
      "ws_heartbeat", "ws_greeting_delay" }) do
    if opts[k] then
      add_arg(args, "--" .. k:gsub("_", "-"), tostring(opts[k]))
    end
  end
  if opts.verbose then
    add_arg(args, "--verbose")
  end
  local ppid = own_pid()
  if ppid and opts.parent_pid ~= false then
    add_arg(args, "--parent-pid", ppid) -- no mock outlives its test process
  end
  if opts.oauth2 then -- OAuth 2.0 mode: { dir =, token_ttl =, session_ttl =, key_bits = }
    add_arg(args, "--oauth2")
    for _, k in ipairs({ "dir", "token_ttl", "session_ttl", "key_bits" }) do
      if opts.oauth2[k] ~= nil then
        add_arg(args, "--oauth2-" .. k:gsub("_", "-"), tostring(opts.oauth2[k]))
      end
    end
  end
  for _, a in ipairs(opts.args or {}) do
    add_arg(args, a)
  end
  return args
end

-- Starts a mock gateway process on a free port. opts: tls (default true), state ("ready"),
-- pacing (true), idle_timeout, init_delay, reauth_delay, head_timeout, keepalive_timeout,
-- ws_heartbeat, ws_greeting_delay (seconds), verbose, config (any other run-time settings, as
-- POST /__mock/config), oauth2 (OAuth 2.0 mode: { dir, token_ttl, session_ttl, key_bits }, see
-- --oauth2-*), args (extra command-line arguments), parent_pid (false: may outlive this process).
-- Returns the mock, or nil, err when it does not start; raises on an unknown or ill-typed option.
function helper.start(opts)
  opts = opts or {}
  check_start_options(opts)
  local args = start_args(opts)
  local errfile = os.tmpname()
  local cmd = "echo $$; exec " .. helper.mock_command() .. " " .. table.concat(args, " ")
    .. " 2>" .. shell_quote(errfile) .. " </dev/null"
  local t0 = socket.gettime()
  local p = assert(io.popen(cmd, "r"))
  local pid = p:read("l")
  local url = p:read("l")
  local self = setmetatable({ proc = p, pid = tonumber(pid), errfile = errfile, command = cmd }, proc)
  if not url then
    local ok, how, code = p:close()
    self.proc = nil
    local f = io.open(errfile, "r")
    local msg = f and f:read("a") or ""
    if f then
      f:close()
    end
    os.remove(errfile)
    return nil, string.format("mock did not start (%s %s %s): %s", tostring(ok), tostring(how),
      tostring(code), msg)
  end
  self.url = url
  self.startup_time = socket.gettime() - t0
  self.root = url:match("^(.-)/v1/api$")
  self.tls = url:sub(1, 6) == "https:"
  self.host, self.port = self.root:match("^https?://([^:/]+):(%d+)$")
  self.port = tonumber(self.port)
  self.ws_url = (self.tls and "wss" or "ws") .. self.root:match("^https?(.*)$")
    .. "/v1/api/ws"
  if opts.config then
    local ok, err = pcall(self.config, self, opts.config)
    if not ok then
      self:stop()
      return nil, err
    end
  end
  return self
end

function proc:connect(opts)
  opts = opts or {}
  return helper.connect({ host = self.host, port = self.port, tls = self.tls, timeout = opts.timeout })
end

-- One request on a fresh connection (closed afterwards). path is from the root, e.g. "/v1/api/tickle".
function proc:request(method, path, opts)
  local c, err = self:connect(opts)
  if not c then
    return nil, err
  end
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do
    o[k] = v
  end
  o.close = true
  local resp, rerr, partial = c:request(method, path, o)
  c:close()
  return resp, rerr, partial
end

-- A JSON request to the control API; raises on failure (tests want loud failures).
function proc:control(method, path, body)
  local opts = {}
  if body ~= nil then
    opts.body = cjson.encode(body)
    opts.headers = { ["Content-Type"] = "application/json" }
  end
  local resp, err = self:request(method, path, opts)
  if not resp then
    error("mock control " .. method .. " " .. path .. ": " .. tostring(err), 2)
  end
  local ok, data = pcall(cjson.decode, resp.body)
  if not ok then
    error("mock control " .. path .. ": bad JSON: " .. resp.body, 2)
  end
  if resp.status ~= 200 then
    error(string.format("mock control %s %s: %d %s", method, path, resp.status, resp.body), 2)
  end
  return data, resp
end

function proc:state()
  return self:control("GET", "/__mock/state")
end

function proc:set_state(s)
  if type(s) == "string" then
    s = { state = s }
  end
  return self:control("POST", "/__mock/state", s)
end

function proc:config(t)
  if t == nil then
    return self:control("GET", "/__mock/config")
  end
  return self:control("POST", "/__mock/config", t)
end

function proc:fault(t)
  return self:control("POST", "/__mock/fault", t)
end

function proc:faults()
  return self:control("GET", "/__mock/fault").faults
end

function proc:clear_faults()
  return self:control("DELETE", "/__mock/fault")
end

-- Answers held back by faults of kind "hold": the ids of the faults holding them, one per answer.
function proc:held()
  return self:control("GET", "/__mock/held").held
end

-- Waits until the mock holds at least n answers (default 1), polling its control API every
-- 5 ms; true, or false after timeout seconds (default 10).
function proc:await_held(n, timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while #self:held() < (n or 1) do
    if socket.gettime() > deadline then
      return false
    end
    socket.sleep(0.005)
  end
  return true
end

-- Sends the held answers (those of fault id, or all). Returns how many.
function proc:release(id)
  return self:control("POST", "/__mock/release", id and { id = id } or nil).released
end

function proc:log()
  return self:control("GET", "/__mock/log").requests
end

-- The logged requests whose API path (relative to /v1/api, no query) is `api`; all without it.
function proc:api_log(api)
  local out = {}
  for _, e in ipairs(self:log()) do
    if not api or e.api == api then out[#out + 1] = e end
  end
  return out
end

-- The JSON body of a response (or a body string), asserting that it is JSON.
function helper.json(resp)
  local body = type(resp) == "table" and resp.body or resp
  local ok, v = pcall(cjson.decode, body)
  assert(ok, "not JSON: " .. tostring(body))
  return v
end

-- Puts clients in the gateway's penalty box (t: seconds, retry_after, extend); see docs/testing.md.
function proc:penalty(t)
  return self:control("POST", "/__mock/penalty", t or {}).penalty
end

function proc:clear_penalty()
  return self:control("DELETE", "/__mock/penalty")
end

-- An ibkr session on this mock: ibkr.new with base_url = the mock's URL and opts passed on.
function proc:session(opts)
  local o = { base_url = self.url }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  return require("ibkr").new(o)
end

-- OAuth 2.0 mode (start{oauth2 = {}}): the mode's state (GET /__mock/oauth2: client, settings,
-- counters), or with a table its settings changed first (POST: token_ttl, session_ttl, expire,
-- ip, sso_expires_in, fault(s), echo, echo_at, clear_faults, reset; docs/oauth.md).
function proc:oauth2(settings)
  if settings == nil then
    return self:control("GET", "/__mock/oauth2")
  end
  return self:control("POST", "/__mock/oauth2", settings)
end

-- A fault of the token endpoints: { endpoint = "token" | "sso", kind = ..., count = ... }.
function proc:oauth2_fault(f)
  return self:oauth2({ fault = f })
end

-- An ibkr session on this mock with its OAuth 2.0 test client (its config file) and opts.
function proc:oauth2_session(opts)
  local cfg, base_url = require("ibkr.oauth2").read_config(self:oauth2().client.config_file)
  if not cfg then
    error("mock oauth2: " .. tostring(base_url), 2)
  end
  local o = { base_url = base_url, oauth2 = cfg }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  return require("ibkr").new(o)
end

function proc:clear_log()
  return self:control("DELETE", "/__mock/log")
end

function proc:reset()
  return self:control("POST", "/__mock/reset")
end

function proc:login(state)
  return self:control("POST", "/__mock/login", state and { state = state } or nil)
end

---------------------------------------------------------------------------------------------
-- The websocket /v1/api/ws (docs/testing.md, "The websocket")

-- The websocket's state: clients, heartbeats, frozen, counters, connections, closed.
function proc:ws()
  return self:control("GET", "/__mock/ws")
end

-- Waits until pred(gw:ws()) is true, asking the mock every 10 ms: for events such as a client
-- connected, a message received, a connection closed. Returns that state; raises after timeout
-- seconds (default 5) with the last state seen.
function proc:ws_wait(pred, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while true do
    local st = self:ws()
    if pred(st) then
      return st
    end
    if socket.gettime() > deadline then
      error("mock websocket: condition not met within " .. tostring(timeout or 5) .. " s; state: "
        .. cjson.encode(st), 2)
    end
    socket.sleep(0.01)
  end
end

-- Ends the websocket connections: with a close frame when t.code is given (t.reason, t.conn: only
-- that connection), at once (no close frame) without. Returns how many.
function proc:ws_drop(t)
  return self:control("POST", "/__mock/ws/drop", t or {}).dropped
end

function proc:ws_heartbeats(on)
  return self:control("POST", "/__mock/ws/heartbeats", { enabled = on ~= false }).heartbeats
end

-- Frozen: the websocket connections neither read nor write (a hung gateway); false thaws them.
function proc:ws_freeze(on)
  return self:control("POST", "/__mock/ws/freeze", { frozen = on ~= false }).frozen
end

local function push_body(key, value, opts)
  local t = { [key] = value }
  for k, v in pairs(opts or {}) do
    t[k] = v
  end
  return t
end

-- Pushes a message to every websocket client: a table is sent as JSON, a string as a text frame.
-- opts: conn (only that connection), ["repeat"] (n times). Returns how many frames were queued.
function proc:ws_push(msg, opts)
  local key = type(msg) == "string" and "text" or "message"
  return self:control("POST", "/__mock/ws/push", push_body(key, msg, opts)).sent
end

-- Writes bytes as they are (no framing: hostile frames) to every websocket client.
function proc:ws_push_raw(bytes, opts)
  local hex = bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end)
  return self:control("POST", "/__mock/ws/push", push_body("raw_hex", hex, opts)).sent
end

function proc:ws_ping(data, opts)
  return self:control("POST", "/__mock/ws/push", push_body("ping", data or "", opts)).sent
end

-- Greets now every connection that knows its session and waits for its greeting.
function proc:ws_greet()
  return self:control("POST", "/__mock/ws/greet").greeted
end

-- The messages the websocket clients sent (oldest first): seq, conn, time, opcode, bytes, text,
-- kind, dropped (before the greeting).
function proc:ws_messages()
  return self:control("GET", "/__mock/ws/messages").messages
end

function proc:ws_clear_messages()
  return self:control("DELETE", "/__mock/ws/messages")
end

-- What the mock wrote to stderr so far.
function proc:stderr()
  if not self.proc then
    return self.stderr_text or ""
  end
  local f = io.open(self.errfile, "r")
  if not f then
    return ""
  end
  local s = f:read("a")
  f:close()
  return s
end

-- Waits (bounded) until the process has exited (a zombie or gone). Returns true if it did.
function proc:wait_exit(timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while true do
    local st = proc_state(self.pid)
    if st == nil or st == "Z" then
      return true
    end
    if socket.gettime() > deadline then
      return false
    end
    socket.sleep(0.005)
  end
end

-- Stops the mock (SIGTERM, SIGKILL after 5 s) and reaps it. Returns how ("exit"|"signal"), code.
function proc:stop(signal)
  if not self.proc then
    return self.exit_how, self.exit_code
  end
  os.execute("kill -" .. (signal or "TERM") .. " " .. self.pid .. " 2>/dev/null")
  if not self:wait_exit(5) then
    os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
  end
  return self:reap()
end

-- Reaps an exited process (after a shutdown request, for example).
function proc:reap()
  if not self.proc then
    return self.exit_how, self.exit_code
  end
  self.stdout_rest = self.proc:read("a")
  local _, how, code = self.proc:close()
  self.proc = nil
  self.exit_how, self.exit_code = how, code
  local f = io.open(self.errfile, "r")
  self.stderr_text = f and f:read("a") or ""
  if f then
    f:close()
  end
  os.remove(self.errfile)
  return how, code
end

proc.__gc = function(self)
  if self.proc then
    pcall(proc.stop, self, "KILL")
  end
end

-- `local gw <close> = testing.start{}` stops it at the end of the scope.
proc.__close = function(self)
  self:stop()
end

helper.shell_quote = shell_quote

return helper
