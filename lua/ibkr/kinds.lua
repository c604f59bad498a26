-- ibkr.kinds: the one registry of error kinds. For each kind of failure the library can meet it
-- says whether a call tries again (and on what evidence), the session state it means, the CLI's
-- exit code and the hint — a function of what was seen (status, body, TLS code, endpoint).
-- ibkr.state, ibkr.retry, the calls, the keep-alive and ibkr-session all read it; nothing else
-- decides what a kind means. docs/ibkr.md's table of kinds is checked against it
-- (spec/kinds_spec.lua). Pure functions of error objects: no I/O, no clock.
--
-- Adding a kind: one entry in M.KINDS (what, retried, retryable, state, hint) and one row in
-- docs/ibkr.md's table (the spec says which).

local core = require("ibkr.core")

local M = {}

------------------------------------------------------------------------------------------------
-- States (s:health(), s:state(), the keep-alive, the CLI): the CLI's exit code and what to do.

-- The CLI's exit codes: 0 ready, 1 the gateway answered but the session is not ready or the call
-- failed, 2 unreachable (connect, timeout, TLS), 3 login required.
M.STATES = {
  ready = { exit = 0 },
  competing = { exit = 1 },
  unauthenticated = { exit = 1 },
  disconnected = { exit = 1 },
  no_session = { exit = 3 },
  down = { exit = 2 },
  tls = { exit = 2 },
  error = { exit = 1 },
}

function M.exit_code(st)
  local s = M.STATES[st]
  return s and s.exit or 1
end

------------------------------------------------------------------------------------------------
-- Evidence

-- scheme, host:port (without credentials) and path of a base URL, or nil when it does not parse
local function split_url(url)
  local scheme, hostport, path = tostring(url):match("^(%a[%w+.-]*)://([^/?#]*)([^?#]*)")
  if not scheme then return nil end
  return scheme:lower(), hostport:gsub("^.*@", ""), path
end
M.split_url = split_url

-- The gateway's root URL, where a browser logs in ("https://localhost:5000/").
function M.login_url(url)
  local scheme, hostport = split_url(url)
  if not scheme then return "the gateway's root URL" end
  return scheme .. "://" .. hostport .. "/"
end

-- Whether err is a redirect to the gateway's SSO login pages (/sso/Login, /sso/Dispatcher): the
-- SSO session is gone and only a browser login helps (field report ibeam #257).
function M.is_login_redirect(err)
  if err.kind ~= "http" or type(err.status) ~= "number" or err.status < 300 or err.status > 399 then
    return false
  end
  local loc = err.location
  if type(loc) ~= "string" and type(err.headers) == "table" then
    loc = err.headers.location or err.headers.Location
  end
  if type(loc) ~= "string" then loc = err.body end -- the page links to its target
  return type(loc) == "string" and (loc:find("/sso/Login", 1, true) ~= nil
    or loc:find("/sso/Dispatcher", 1, true) ~= nil)
end

-- curl codes of a connection that ended before any response: 52 "Empty reply from server",
-- 55 send error, 56 receive error (reset). The engine reports these as kind "protocol" with
-- no_response = true; older cores give only the curl_code.
local NO_RESPONSE = { [52] = true, [55] = true, [56] = true }

-- Whether err is a connection dropped or reset before any response arrived.
function M.no_response(err)
  if err.kind ~= "protocol" or err.status ~= nil then return false end
  return err.no_response == true or NO_RESPONSE[err.curl_code] == true
end

-- Whether err is the gateway (or the session keeping its Retry-After) saying "not now": a 429,
-- a 503 with Retry-After, or a call refused without sending (kind "rate_limited"). Such an answer
-- says nothing about the session's state.
function M.says_wait(err)
  return err.kind == "rate_limited" or err.status == 429
    or (err.status == 503 and err.retry_after ~= nil)
end

------------------------------------------------------------------------------------------------
-- Hints: one line saying what the evidence most likely means and what to do, or nil.
-- ctx: { url = base URL, cacert = CA file or nil, proxy = proxy URL or nil,
--        url_from_env = the URL came from $IBKR_BASE_URL }

local function state_hint(st, ctx)
  if st == "no_session" then
    return "login required: open " .. M.login_url(ctx.url) .. " in a browser and log in"
  elseif st == "unauthenticated" then
    return "the brokerage session is not open: `ibkr-session init` (or `wait --init`) opens it"
  elseif st == "competing" then
    return "another login (TWS, mobile app, another gateway) holds the brokerage session: "
      .. "`init --compete` takes it over (that login is disconnected)"
  elseif st == "disconnected" then
    return "the gateway lost its connection to IBKR: `ibkr-session wait --init` waits for it to come back"
  end
  return nil
end

-- A hint for a session state that is not ready, or nil.
function M.state_hint(st, ctx) return state_hint(st, ctx or {}) end

local function tls_hint(err, ctx)
  local msg = tostring(err.message or "")
  if msg:find("subject name", 1, true) or msg:find("does not match target host", 1, true) then
    local _, hostport = split_url(ctx.url)
    return "TLS: the gateway's certificate does not name the host " .. tostring(hostport)
      .. " (the Client Portal Gateway's own names only localhost): reach it by a name its certificate"
      .. " lists, give it a certificate for this name (--cacert FILE then trusts it), or -k/--insecure"
  end
  if ctx.cacert then
    if msg:find("certificate file", 1, true) or msg:find("CA ?file") then
      return "TLS: cannot use the CA file " .. ctx.cacert .. ": pass --cacert with a readable PEM file "
        .. "holding the gateway's certificate, or -k/--insecure"
    end
    return "TLS: the gateway's certificate is not signed by " .. ctx.cacert
      .. ": pass --cacert FILE with the gateway's own certificate (or its CA), or -k/--insecure"
  end
  if msg:find("wrong version number", 1, true) or msg:find("packet length too long", 1, true) then
    return "TLS: the server does not speak TLS here: if the gateway serves plain HTTP, use an http:// URL"
  end
  return "TLS: the gateway's certificate was refused (the Client Portal Gateway's is self-signed; it is "
    .. "trusted without checks only at localhost/127.0.0.1/::1): pass --cacert FILE with the gateway's "
    .. "certificate, or -k/--insecure"
end

local function connect_hint(_, ctx)
  local _, hostport = split_url(ctx.url)
  if ctx.proxy then
    return "nothing answers through the proxy " .. core.printable(tostring(ctx.proxy), 200)
      .. ": is the proxy running (and can it reach " .. tostring(hostport) .. ")?"
  end
  local where = ctx.url_from_env and " ($IBKR_BASE_URL)" or ""
  return "nothing answers at " .. tostring(hostport) .. where
    .. ": is the gateway running, and is the URL right?"
end

local function https_hint(err, ctx)
  local scheme, hostport, path = split_url(ctx.url)
  if scheme == "http" and (err.kind == "protocol" or (err.kind == "http" and err.status == 400)) then
    return "the gateway may speak HTTPS (the Client Portal Gateway does by default): try --url https://"
      .. hostport .. path
  end
  return nil
end

local function http_hint(err, ctx)
  local data = type(err.data) == "table" and err.data or {}
  if err.status == 401 or data.error == "no session" then return state_hint("no_session", ctx) end
  local scheme, hostport, path = split_url(ctx.url)
  if err.status == 404 and path and not path:find("/v1/api", 1, true) then
    return "the URL has no /v1/api: the gateway serves the API below it, e.g. --url "
      .. (scheme or "https") .. "://" .. (hostport or "localhost:5000") .. "/v1/api"
  end
  return https_hint(err, ctx)
end

------------------------------------------------------------------------------------------------
-- The kinds

local function always() return true end
-- the answer's body says {"error":"no session"}
local function says_no_session(err)
  return type(err.data) == "table" and err.data.error == "no session"
end
local function never() return false end

-- kind -> {
--   what       when a call fails with it (docs/ibkr.md)
--   retried    how ibkr's calls try again (docs); retryable(err): whether this error may
--              succeed when tried again (calls retry only requests safe to repeat)
--   state      the session state it means: a name, or function(err) -> name, or nil when it
--              says nothing about the session (s:health() then says "error"); state_doc (docs)
--   hint       function(err, ctx) -> one line or nil
-- }
M.KINDS = {
  connect = {
    what = "no connection: refused, unreachable, name not resolved",
    retried = "yes", retryable = always, state = "down", hint = connect_hint,
  },
  timeout = {
    what = "no answer within the time (the exchange's `timeout`, the call's `deadline`)",
    retried = "yes", retryable = always, state = "down",
    hint = function()
      return "the gateway did not answer in time: it may be hung or restarting (a longer --timeout lets "
        .. "the gateway's own answer through)"
    end,
  },
  tls = {
    what = "the TLS handshake or the certificate check failed",
    retried = "no", retryable = never, state = "tls", hint = tls_hint,
  },
  protocol = {
    what = "not a valid HTTP answer; a connection dropped or reset",
    retried = "when dropped before any answer (`no_response`)", retryable = M.no_response,
    state = "error", hint = https_hint,
  },
  http = {
    what = "a non-2xx answer (`status`), redirects included; status 200 for a 2xx body the helpers refused",
    retried = "429 and 503",
    retryable = function(err) return err.status == 429 or err.status == 503 end,
    state = function(err)
      if err.status == 401 or M.is_login_redirect(err) or says_no_session(err) then return "no_session" end
      if M.says_wait(err) then return nil end
      return "error"
    end,
    state_doc = "`no_session` (401, `{\"error\":\"no session\"}`, login redirect); none (429, 503 with "
      .. "Retry-After); else `error`",
    exit_doc = "3 / 1",
    hint = http_hint,
  },
  json = {
    what = "a 2xx answer whose body is not JSON",
    retried = "no", retryable = never, state = "error",
  },
  too_large = {
    what = "an answer larger than `max_body`",
    retried = "no", retryable = never, state = "error",
  },
  rate_limited = {
    what = "refused without sending: the client's pacing, or a hold (`retry_after`)",
    retried = "no", retryable = never, state = nil,
    hint = function(err)
      if err.retry_after then
        return string.format("the gateway asked to wait: try again in %.0f s", err.retry_after)
      end
    end,
  },
  closed = {
    what = "the session was closed (also in the middle of a call), or the keep-alive stopped",
    retried = "no", retryable = never, state = nil,
  },
  auth = {
    what = "OAuth: the live session token was refused or could not be verified",
    retried = "no", retryable = never,
    state = function(err) return says_no_session(err) and "no_session" or "error" end,
    state_doc = "`error`", exit_doc = "1",
  },
  busy = {
    what = "`ibkr.core` only: a request's result asked for before it finished",
    retried = "no", retryable = never, state = nil,
  },
  callback = {
    what = "keep-alive `on_error` only: a callback raised",
    retried = "no", retryable = never, state = nil,
  },
}

local function entry(err)
  return M.KINDS[err.kind]
end

-- Whether the failure err may succeed when tried again.
function M.retryable(err)
  local k = entry(err)
  return k ~= nil and k.retryable(err) == true
end

-- The state err says the session is in, or nil when it says nothing about it (a "not now", a
-- close, a programmer's kind).
function M.observed(err)
  local k = entry(err)
  if not k then return "error" end
  local st = k.state
  if type(st) == "function" then return st(err) end
  return st
end

-- The state of a failed call as s:health() reports it: what err says, else "error".
function M.state(err)
  return M.observed(err) or "error"
end

-- The CLI's exit code for a failed call.
function M.exit(err)
  return M.exit_code(M.state(err))
end

-- One hint line for a failed call, or nil. ctx as above.
function M.hint(err, ctx)
  local k = entry(err)
  if not (k and k.hint) then return nil end
  return k.hint(err, ctx or {})
end

------------------------------------------------------------------------------------------------
-- The docs' table of kinds

M.ORDER = { "connect", "timeout", "tls", "protocol", "http", "json", "too_large", "rate_limited",
  "closed", "auth", "busy", "callback" }

-- The rows of docs/ibkr.md's table of kinds, as they must appear there.
function M.doc_rows()
  local rows = {
    "| kind | when | retried | state | CLI exit |",
    "|---|---|---|---|---|",
  }
  for _, name in ipairs(M.ORDER) do
    local k = M.KINDS[name]
    local st = k.state_doc or (type(k.state) == "string" and "`" .. k.state .. "`") or "none (unchanged)"
    local exit = k.exit_doc or tostring(M.exit_code(type(k.state) == "string" and k.state or "error"))
    rows[#rows + 1] = string.format("| `%s` | %s | %s | %s | %s |", name, k.what, k.retried, st, exit)
  end
  return rows
end

return M
