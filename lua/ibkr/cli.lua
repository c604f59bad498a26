-- ibkr-session: the command-line client (bin/ibkr-session is a thin launcher of main()).
-- The reference is docs/cli.md. Files: cli/args.lua (usage, parsing), cli/commands.lua (the
-- one-shot commands), cli/keepalive.lua, cli/drive.lua (runs the work until done, the deadline
-- or a signal), cli/report.lua (exit codes, descriptions), cli/hints.lua (what to do),
-- cli/out.lua (printable lines, JSON lines).
--
-- Exit codes: 0 success (status/wait: ready), 1 the gateway answered but the session is not ready
-- or the call failed, 2 unreachable (connect, timeout, TLS), 3 login required (no_session),
-- 64 usage, 130/143 ended by SIGINT/SIGTERM.

local ibkr = require("ibkr")
local core = require("ibkr.core")
local args = require("ibkr.cli.args")
local out = require("ibkr.cli.out")
local report = require("ibkr.cli.report")
local hints = require("ibkr.cli.hints")
local drive = require("ibkr.cli.drive")

local M = {}

M.USAGE = args.USAGE
M.parse = args.parse

M.DEFAULT_TIMEOUT = 25      -- seconds for a one-shot command: under Docker's 30 s healthcheck timeout
M.DEFAULT_WAIT = 60         -- seconds `wait` waits when --timeout is not given
M.CUT_SLACK = 0.25          -- the library's own deadline comes first; the command is cut this much later

local function wants_json(argv)
  for _, a in ipairs(argv) do if a == "--json" then return true end end
  return false
end

local USAGE_TAIL = args.USAGE:match("^[^\n]*\n")
  .. "(ibkr-session --help lists the commands and exit codes)\n"

local function usage_error(io_, msg, json)
  if json then
    io_.stdout:write(out.json{ ok = false, exit = 64, error = { kind = "usage", message = msg } }, "\n")
  else
    io_.stderr:write("ibkr-session: ", out.text(msg), "\n", USAGE_TAIL)
  end
  return 64
end

-- --oauth-config FILE / --oauth2-config FILE: a headless OAuth 1.0a / 2.0 session (docs/oauth.md).
-- ibkr/oauth.lua or ibkr/oauth2.lua reads the file and sets opts.oauth or opts.oauth2, and
-- opts.base_url from the file when --url gave none. Returns nil or a usage error text.
local function apply_oauth(opts, file, module, option)
  local ok, oauth = pcall(require, module)
  if not ok then return option .. ": this installation has no OAuth support (module " .. module .. ")" end
  return oauth.cli_apply(opts, file)
end

-- The options of ibkr.new for the command line.
local function session_options(o)
  local opts = { base_url = o.url, ca_file = o.cacert, retries = o.retries, cooperative = true }
  if o.insecure then opts.verify = false end
  if o.proxy then opts.proxy = o.proxy end
  -- One-shot commands: --timeout (default 25 s) is the library's deadline of the call, retries
  -- included, and bounds each exchange; `wait`: each exchange at most --timeout (wait_ready's
  -- own timeout is the deadline); keepalive: --timeout bounds each exchange.
  local per = ibkr.DEFAULT_TIMEOUT or 15
  if o.command == "keepalive" then
    per = o.timeout
  elseif o.command == "wait" then
    per = math.min(o.timeout or M.DEFAULT_WAIT, per)
  else
    local budget = o.timeout or M.DEFAULT_TIMEOUT
    opts.deadline = budget
    per = math.min(budget, per)
  end
  if per then
    opts.timeout = per
    if per < 3 then opts.connect_timeout = per end
  end
  return opts
end

-- Makes the session -> session, whether its URL came from $IBKR_BASE_URL; or nil, a usage error
-- text (a bad URL names its source: --url, the --oauth-config file or $IBKR_BASE_URL).
local function make_session(o)
  local env = os.getenv("IBKR_BASE_URL")
  if env == "" then env = nil end
  local opts = session_options(o)
  if o.oauth_config and o.oauth2_config then
    return nil, "--oauth-config and --oauth2-config exclude each other"
  end
  local cerr
  if o.oauth_config then
    cerr = apply_oauth(opts, o.oauth_config, "ibkr.oauth", "--oauth-config")
  elseif o.oauth2_config then
    cerr = apply_oauth(opts, o.oauth2_config, "ibkr.oauth2", "--oauth2-config")
  end
  if cerr then return nil, cerr end
  local url_from_env = opts.base_url == nil and env ~= nil
  if url_from_env then opts.base_url = env end
  local ok, s = pcall(ibkr.new, opts)
  if ok then return s, url_from_env end
  local msg = tostring(s):gsub("^[^:]*:%d+: ", "")
  if url_from_env and msg:find("url", 1, true) then
    msg = "$IBKR_BASE_URL (" .. env .. "): " .. msg
  end
  return nil, msg
end

local function print_report(r, o, io_)
  if o.json then
    io_.stdout:write(out.json(r.doc, r.whole), "\n")
    return
  end
  if r.line then io_.stdout:write(r.line, "\n") end
  if r.errline then io_.stderr:write("ibkr-session: ", r.errline, "\n") end
  if r.code == 64 then io_.stderr:write(USAGE_TAIL) end
  if r.hint then io_.stderr:write("hint: ", out.text(r.hint, 1000), "\n") end
end

-- What a command cut short says: the last failure seen (the gateway's own answer, e.g. a 503),
-- or that nothing answered within the time.
local function cut_report(o, s, ctx, budget)
  local last = s:stats().last_error
  local err = core.error{
    kind = "timeout", cause = last,
    message = string.format("no result within %g s (--timeout)", budget),
  }
  local failed = require("ibkr.cli.commands").failed
  if not (last and last.kind ~= "timeout") then return failed(o.command, err, ctx) end
  local r = failed(o.command, last, ctx)
  r.errline = r.errline .. string.format(" (gave up after %g s)", budget)
  r.doc.gave_up_after = budget
  return r
end

local function signal_report(o, sig)
  local code = report.SIGNAL_EXIT[sig] or 1
  return { code = code, errline = o.command .. ": interrupted by SIG" .. sig,
    doc = { command = o.command, ok = false, exit = code, signal = sig,
      error = { kind = "interrupted", message = "interrupted by SIG" .. sig } } }
end

-- A one-shot command in a coroutine, cut at its budget or by a signal.
local function run_command(s, o, ctx)
  local budget = o.timeout or (o.command == "wait" and M.DEFAULT_WAIT or M.DEFAULT_TIMEOUT)
  ctx.wait_timeout = budget
  local fn = require("ibkr.cli.commands")[o.command]
  local co = coroutine.create(function() return fn(s, o, ctx) end)
  local how, res = drive.run(co, { deadline = core.monotonic() + budget + M.CUT_SLACK })
  if how == "done" then return res[1] end
  if how == "signal" then return signal_report(o, res) end
  return cut_report(o, s, ctx, budget)
end

local function check_data(o)
  if o.data == nil then return true end
  local ok, v, err = pcall(core.decode, o.data)
  if not ok or v == nil then return nil, "--data is not JSON: " .. tostring(err or v) end
  return true
end

-- main(argv [, io_]) -> exit code. io_ = {stdout=, stderr=} (default io). Called with io_ (tests,
-- embedding) it installs no signal handlers: SIGINT/SIGTERM keep their disposition.
function M.main(argv, io_)
  local embedded = io_ ~= nil
  io_ = io_ or { stdout = io.stdout, stderr = io.stderr }
  argv = argv or {}
  local json = wants_json(argv)
  local o, msg = args.parse(argv)
  if not o then return usage_error(io_, msg, json) end
  if o.help then
    io_.stdout:write(json and (out.json({ usage = args.USAGE }, true) .. "\n") or args.USAGE)
    return 0
  end
  if o.version then
    -- (not libcurl's version: curl_version() keeps memory it never frees, which LeakSanitizer reports)
    local v = "ibkr-session " .. ibkr._VERSION .. " (lua-ibkr, " .. _VERSION .. ")"
    io_.stdout:write(json and out.json{ version = ibkr._VERSION } or v, "\n")
    return 0
  end
  local okd, derr = check_data(o)
  if not okd then return usage_error(io_, derr, json) end
  local s, from_env = make_session(o)
  if not s then return usage_error(io_, from_env, json) end
  local ctx = { url = s.base_url, cacert = o.cacert, url_from_env = from_env, proxy = o.proxy, words = "cli" }
  -- the process's own signal handlers: only when main runs the process (not called with io_)
  if not embedded then core.signal_catch{ "INT", "TERM" } end
  local code
  if o.command == "keepalive" then
    local kerr
    code, kerr = require("ibkr.cli.keepalive").run(s, o, io_)
    if not code then
      s:close()
      return usage_error(io_, kerr, json) -- --listen: luasocket missing, the address refused
    end
  else
    local r = run_command(s, o, ctx)
    print_report(r, o, io_)
    code = r.code
  end
  s:close()
  return code
end

M.hints = hints -- for tests and tools

return M
