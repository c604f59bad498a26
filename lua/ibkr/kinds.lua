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

-- the answer's body says {"error":"no session"}
local function says_no_session(err)
  return type(err.data) == "table" and err.data.error == "no session"
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
-- Refusals: a gateway that keeps saying no. Each class backs off with a growing, jittered wait
-- after the n-th refusal in a row: min(cap, base · 2^(n-first)) seconds, plus up to JITTER of it
-- at random (so the wait is never shorter: IBKR's penalty box must be outwaited), reset by the
-- first answer that is not one. (docs/ibkr.md, "When the gateway keeps refusing".)
--   pacing  429 without Retry-After: every call of the session is held back (kind rate_limited,
--           no request) — IBKR's penalty box lasts 10 minutes and every request extends it
--   server  a call that ended in 5xx without Retry-After (the nightly reset's 500s, 502, 503,
--           504): the keep-alive's and wait_ready's next attempts wait (own calls are not held)
--   token   OAuth: the live session token refused (kind auth): from the second refusal in a row,
--           token requests are held back (the calls needing one fail at once with kind auth)
--   push    the push channel lost (closed, refused, silent): the stream's next connect waits
--           (ibkr/stream.lua; the attempts since the channel was last open)
M.JITTER = 0.1
M.REFUSALS = {
  pacing = { base = 60, cap = 600, first = 1, what = "429 without Retry-After" },
  server = { base = 5, cap = 120, first = 1, what = "5xx without Retry-After" },
  token = { base = 30, cap = 600, first = 2, what = "OAuth token refused" },
  push = { base = 1, cap = 60, first = 1, what = "push channel lost" },
}

-- The refusal class of an error (a key of M.REFUSALS), or nil.
function M.refusal(err)
  if err.kind == "auth" and err.hold == nil then return "token" end
  if err.kind ~= "http" or type(err.status) ~= "number" or err.retry_after then return nil end
  if err.status == 429 then return "pacing" end
  if err.status >= 500 and err.status <= 599 then return "server" end
  return nil
end

-- Seconds to hold back after the n-th refusal of `class` in a row (0 before its first hold).
-- `random` is math.random-like.
function M.backoff(class, n, random)
  local r = M.REFUSALS[class]
  if n < r.first then return 0 end
  local step = math.min(r.cap, r.base * 2 ^ (n - r.first))
  return step * (1 + M.JITTER * (random or math.random)())
end

------------------------------------------------------------------------------------------------
-- Hints: one line saying what the evidence shows and what to do, or nil when it shows nothing
-- clear. Derived only from what was seen: the status, the body's words, the TLS code, the
-- endpoint, the URL. ctx: { url = base URL, cacert = CA file or nil, proxy = proxy URL or nil,
-- url_from_env = the URL came from $IBKR_BASE_URL, words = "cli" (ibkr-session's options) or
-- "lua" (the default: ibkr.new's options and the session's calls) }

local WORDS = {
  cli = {
    cacert = "--cacert FILE", cacert_flag = "--cacert", insecure = "-k/--insecure", url = "--url ",
    timeout = "a longer --timeout", init = "`ibkr-session init` (or `wait --init`)",
    compete = "`init --compete`", wait = "`ibkr-session wait --init`", status = "`ibkr-session status`",
    reauth = "`ibkr-session reauthenticate`", no_init = "--no-init",
  },
  lua = {
    cacert = "ca_file = FILE", cacert_flag = "ca_file", insecure = "verify = false", url = "base_url = ",
    timeout = "a longer timeout", init = "s:init_brokerage() (or s:wait_ready{ init = true })",
    compete = "s:init_brokerage{ compete = true }", wait = "s:wait_ready{ init = true }",
    status = "s:auth_status()", reauth = "s:reauthenticate()", no_init = "init = false",
  },
}

local function words(ctx) return WORDS[ctx.words] or WORDS.lua end

local function state_hint(st, ctx)
  local w = words(ctx)
  if st == "no_session" then
    return "login required: open " .. M.login_url(ctx.url) .. " in a browser and log in"
  elseif st == "unauthenticated" then
    return "the brokerage session is not open: " .. w.init .. " opens it"
  elseif st == "competing" then
    return "another login (TWS, mobile app, another gateway) holds the brokerage session: "
      .. w.compete .. " takes it over (that login is disconnected)"
  elseif st == "disconnected" then
    return "the gateway lost its connection to IBKR: " .. w.wait .. " waits for it to come back"
  end
  return nil
end

-- A hint for a session state that is not ready, or nil.
function M.state_hint(st, ctx) return state_hint(st, ctx or {}) end

-- The gateway's own words in an error: the core's message after "HTTP <status>: ", or nil.
local function said(err)
  local m = type(err.message) == "string" and err.message or ""
  return m:match("^HTTP %d+: (.+)$")
end

-- X509_V_* codes of a certificate check (OpenSSL's x509_vfy.h)
local X509_NOT_YET_VALID, X509_EXPIRED = 9, 10
local X509_UNTRUSTED = { [2] = true, [18] = true, [19] = true, [20] = true, [21] = true }

-- The host of a URL without its port (and an IPv6 address without its brackets), or nil.
local function host_of(url)
  local _, hostport = split_url(url)
  if not hostport then return nil end
  return hostport:match("^%[([^%]]*)%]") or hostport:match("^[^:]*")
end

-- A certificate that does not name the host: the host (not its port) and, only when libcurl's
-- message says it ("certificate subject name 'localhost' does not match ..."), the name it has.
local function name_hint(msg, ctx, w)
  local host = host_of(ctx.url) or msg:match("target host name '([^']*)'") or "in the URL"
  local has = msg:match("subject name '([^']*)' does not match")
  return "TLS: the gateway's certificate does not name the host " .. core.printable(host, 200)
    .. (has and (" (it names " .. core.printable(has, 200) .. ")") or "")
    .. ": reach it by a name its certificate lists, give it a certificate for this name ("
    .. w.cacert .. " then trusts it), or " .. w.insecure
end

local function tls_hint(err, ctx)
  local w = words(ctx)
  local msg = tostring(err.message or "")
  local v = err.verify_result
  if msg:find("subject name", 1, true) or msg:find("does not match target host", 1, true) then
    return name_hint(msg, ctx, w)
  end
  if err.curl_code == 77 or msg:find("certificate file", 1, true) or msg:find("CA ?file") then
    return "TLS: cannot use the CA file " .. tostring(ctx.cacert) .. ": pass " .. w.cacert_flag
      .. " with a readable PEM file holding the gateway's certificate, or " .. w.insecure
  end
  if v == X509_EXPIRED or (v == nil and msg:find("certificate has expired", 1, true)) then
    local which = (ctx.cacert and err.not_after) and ("the certificate in " .. ctx.cacert)
      or "the gateway's certificate"
    return "TLS: " .. which .. " expired" .. (err.not_after and (" on " .. err.not_after) or "")
      .. ": give the gateway a new certificate (its conf.yaml sslCert) and trust that one ("
      .. w.cacert .. "), or " .. w.insecure
  end
  if v == X509_NOT_YET_VALID or (v == nil and msg:find("not yet valid", 1, true)) then
    return "TLS: the gateway's certificate is not valid yet: is this machine's clock right?"
  end
  if msg:find("wrong version number", 1, true) or msg:find("packet length too long", 1, true) then
    return "TLS: the server does not speak TLS here: if the gateway serves plain HTTP, use an http:// URL"
  end
  local refused = err.curl_code == 60 or X509_UNTRUSTED[v] or msg:find("certificate problem", 1, true)
  if not refused then return nil end -- a handshake failure that names no certificate problem
  if ctx.cacert then
    return "TLS: the gateway's certificate is not signed by " .. ctx.cacert
      .. ": pass " .. w.cacert .. " with the gateway's own certificate (or its CA), or " .. w.insecure
  end
  return "TLS: the gateway's certificate was refused (the Client Portal Gateway's is self-signed; it is "
    .. "trusted without checks only at localhost/127.0.0.1/::1): pass " .. w.cacert .. " with the gateway's "
    .. "certificate, or " .. w.insecure
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

-- Over http://, what a TLS server does with a plain HTTP request: close at once (an empty reply),
-- send bytes that are not HTTP (TLS alert: libcurl's "HTTP/0.9" or "weird server reply"), or
-- answer 400 saying so ("The plain HTTP request was sent to HTTPS port").
local function https_hint(err, ctx)
  local scheme, hostport, path = split_url(ctx.url)
  if scheme ~= "http" then return nil end
  local not_http = M.no_response(err) or err.curl_code == 1 or err.curl_code == 8
  local tls_talk = (err.kind == "protocol" and not_http
      and not tostring(err.message):find("inside the response headers", 1, true))
    or (err.kind == "http" and err.status == 400 and (said(err) or ""):find("HTTPS", 1, true) ~= nil)
  if not tls_talk then return nil end
  return "the gateway may speak HTTPS (the Client Portal Gateway does by default): try "
    .. words(ctx).url .. "https://" .. hostport .. path
end

-- A hold after a 429 without Retry-After (err.hold: seconds, set by the session).
local function pacing_hint(err)
  local held = err.hold and string.format("every call of this session waits %.0f s", err.hold)
    or "wait before trying again"
  return "the gateway refuses for pacing (429, no Retry-After): " .. held .. "; IBKR's penalty box lasts "
    .. "10 minutes and every request extends it"
end

-- A 429 or 503 with Retry-After (err.retry_after: seconds): when to call again.
local function retry_after_hint(err)
  local what = err.path and ("call " .. core.printable(err.path, 200)) or "call it"
  local paced = err.status == 429 and "; IBKR paces some endpoints on their own (/sso/validate: 1 per 60 s)"
  return string.format("the gateway asks to wait %.0f s (Retry-After, HTTP %d) before you %s again",
    err.retry_after, err.status, what) .. (paced or "")
end

local function http_hint(err, ctx)
  local w = words(ctx)
  local text = said(err) or ""
  if err.status == 401 and err.path == "/iserver/auth/ssodh/init" and not says_no_session(err) then
    return "ssodh/init was refused (HTTP 401), which alone is no lost login (IBKR's edge refuses it at "
      .. "times): " .. w.status .. " says what auth/status says; " .. w.reauth .. " or a later retry "
      .. "may open the brokerage session"
  end
  if err.status == 401 or says_no_session(err) or M.is_login_redirect(err) then
    return state_hint("no_session", ctx)
  end
  local scheme, hostport, path = split_url(ctx.url)
  if err.status == 404 and path and not path:find("/v1/api", 1, true) then
    return "the URL has no /v1/api: the gateway serves the API below it, e.g. " .. w.url
      .. (scheme or "https") .. "://" .. (hostport or "localhost:5000") .. "/v1/api"
  end
  if err.status == 400 and (text:find("Init session first", 1, true) or text:find("no bridge", 1, true)) then
    return "the gateway says the brokerage session is not open (\"" .. text .. "\"): " .. w.init
      .. " opens it"
  end
  if err.status == 403 and text:find("Access Denied", 1, true) then
    return "access denied: the gateway's conf.yaml (ips.allow) must allow this machine's address, "
      .. "and IBKR's edge refuses requests without a User-Agent"
  end
  if err.status == 429 and not err.retry_after then return pacing_hint(err) end
  if (err.status == 429 or err.status == 503) and type(err.retry_after) == "number" then
    return retry_after_hint(err)
  end
  if err.status and err.status >= 500 and err.status <= 599 then
    return "the gateway (or IBKR behind it) is failing (HTTP " .. err.status .. "): around IBKR's nightly "
      .. "maintenance this lasts minutes; repeated attempts back off"
  end
  return https_hint(err, ctx)
end

-- A timeout: no answer within the exchange's time; the call's own deadline spent before an
-- attempt (err.late: nothing was waited for, the gateway may well be answering); or a session
-- that did not become ready in time (err.state: the gateway answered, with that state; err.cause
-- or err.action: what was tried).
local function timeout_hint(err, ctx)
  local st = err.state
  if st and st ~= "down" then
    local c = core.is_error(err.cause) and err.cause or nil
    local tried = err.action or (c and c.action)
    if tried and (st == "unauthenticated" or st == "disconnected" or st == "competing") then
      return "the gateway answers, but the session stayed " .. st .. " after " .. tried
        .. ": it may need a new browser login (" .. M.login_url(ctx.url) .. "), or the account has no "
        .. "brokerage permission (then keep only the SSO session: " .. words(ctx).no_init .. ")"
    end
    if c and not c.late and c.kind ~= "timeout" then return M.hint(c, ctx) end
    return state_hint(st, ctx)
  end
  if err.late then return nil end
  if err.silent then
    return string.format("nothing came on the gateway's websocket for %g s (it beats every ~10 s): the "
      .. "gateway may be hung or restarting, or something between drops idle connections", err.silent)
  end
  return "the gateway did not answer in time: it may be hung or restarting (" .. words(ctx).timeout
    .. " lets the gateway's own answer through)"
end

local function json_hint(err, ctx)
  local body = type(err.body) == "string" and err.body or ""
  if body:match("^%s*<") then
    local title = body:match("<[Tt][Ii][Tt][Ll][Ee][^>]*>([^<]*)<")
    title = title and title:match("%S") and core.printable(title:gsub("%s+", " "), 80) or nil
    return "the server answered a web page" .. (title and (" (\"" .. title .. "\")") or "")
      .. ", not the API: is " .. tostring(ctx.url) .. " the API's URL (…/v1/api)?"
  end
  return nil
end

-- OAuth 2.0 (docs/oauth.md "OAuth 2.0"; gateway facts §11): a refusal of the token endpoint
-- (`what` "token") or the SSO endpoint ("sso"), by its OAuth error code and description (RFC 6749
-- §5.2), a slow endpoint, or the hold after refusals in a row.
local OAUTH2_WHAT = { token = "access token", sso = "SSO session" }
local function oauth2_hint(err, what, ctx)
  if err.hold then
    return string.format("IBKR refused the OAuth 2.0 %s request %d times in a row: the next request waits "
      .. "%.0f s (see the error's cause for IBKR's reason)", OAUTH2_WHAT[what], err.refusals or 0, err.hold)
  end
  if err.cause and err.cause.kind == "timeout" then
    return "the endpoint is slow or unreachable behind a proxy; a longer timeout lets its answer through"
  end
  local data = type(err.data) == "table" and err.data or {}
  local code = type(data.error) == "string" and data.error or nil
  local text = ((code or "") .. " " .. (type(data.error_description) == "string" and data.error_description
    or "")):lower()
  if text:find("%f[%a]ip%f[%A]") or text:find("address", 1, true) then
    return "IBKR checks the 'ip' field against the address its requests come from: set oauth2.ip to this "
      .. "host's public (egress) address, as IBKR sees it through any NAT or proxy"
  end
  if text:find("expire", 1, true) or text:find("%f[%a]iat%f[%A]") or text:find("%f[%a]exp%f[%A]")
      or text:find("clock", 1, true) or text:find("not yet valid", 1, true) then
    return "check this host's clock (NTP): a client assertion is valid from 10 s before to 20 s after "
      .. "it is made"
  end
  if code == "invalid_client" or text:find("%f[%a]kid%f[%A]") or text:find("key", 1, true) then
    return "check client_id, key_id and the private key against IBKR's registration; a newly registered "
      .. "key works only after IBKR's next midnight reset"
  end
  if code == "invalid_scope" or code == "unauthorized_client" then
    return "this client may not open SSO sessions (scope sso-sessions.write): ask IBKR to enable it"
  end
  if what == "sso" and text:find("credential", 1, true) then
    return "check 'credential': the IBKR username the session is for, as registered for this client"
  end
  if err.status == 401 or err.status == 400 then
    return "IBKR refused the OAuth 2.0 " .. OAUTH2_WHAT[what] .. " request: check client_id, key_id, the "
      .. "private key" .. (what == "sso" and ", credential and ip" or "") .. " against IBKR's registration "
      .. "(docs/oauth.md)"
  end
  if err.cause and err.cause.kind == "json" then return json_hint(err.cause, ctx) end
  return nil
end

-- The OAuth 2.0 endpoint an error (or the refusal it holds back for) came from, or nil.
local function oauth2_of(err)
  local what = rawget(err, "oauth_endpoint")
  if OAUTH2_WHAT[what] then return what end
  local c = err.hold and type(err.cause) == "table" and rawget(err.cause, "oauth_endpoint")
  return OAUTH2_WHAT[c] and c or nil
end

-- OAuth 1.0a: the live session token (docs/oauth.md); OAuth 2.0: above.
local function auth_hint(err, ctx)
  if type(err.hint) == "string" then return err.hint end
  local o2 = oauth2_of(err)
  if o2 then return oauth2_hint(err, o2, ctx) end
  local data = type(err.data) == "table" and err.data or {}
  local text = said(err) or (type(data.error) == "string" and data.error) or ""
  if err.hold then
    return string.format("IBKR refused the live session token %d times in a row: the next request waits "
      .. "%.0f s (see the error's cause for IBKR's reason)", err.refusals or 0, err.hold)
  end
  if text:find("invalid consumer", 1, true) then
    return "IBKR does not know this consumer key (or not yet: a new key works only after IBKR's next "
      .. "midnight reset): check consumer_key"
  end
  if err.status == 401 then
    return "IBKR refused the live session token request: check access_token, access_token_secret, the "
      .. "keys and dh_prime against what IBKR's portal issued (docs/oauth.md)"
  end
  if err.cause and err.cause.kind == "json" then return json_hint(err.cause, ctx) end
  return nil
end

-- The gateway ended its websocket (kind hangup): what its close code says (RFC 6455 7.4.1), or
-- nil when it says nothing clear.
local function hangup_hint(err)
  local code = err.close_code
  if code == 1008 then
    return "the gateway refused the websocket's session (close 1008): the session id was stale or the "
      .. "session is gone; the stream tickles for a new one before it reconnects"
  elseif code == 1001 then
    return "the gateway is going away (close 1001): it is shutting down or restarting"
  elseif code == 1000 then
    return "the gateway ended the websocket (close 1000): a logout, a new login or an expired session "
      .. "ends it; the stream reconnects"
  elseif code == nil then
    return "the connection ended without a close frame: the gateway, or a proxy between, dropped it"
  end
  return nil
end

------------------------------------------------------------------------------------------------
-- The kinds

local function always() return true end
local function never() return false end

-- kind -> {
--   what       when a call fails with it (docs/ibkr.md)
--   retried    how ibkr's calls try again (docs); retryable(err): whether this error may
--              succeed when tried again (calls retry only requests safe to repeat)
--   state      the session state it means: a name, or function(err) -> name, or nil when it
--              says nothing about the session (s:health() then says "error"); state_doc (docs)
--   hint       function(err, ctx) -> one line or nil; hint_doc (docs): what it names, from what
-- }
M.KINDS = {
  connect = {
    what = "no connection: refused, unreachable, name not resolved",
    retried = "yes", retryable = always, state = "down", hint = connect_hint,
    hint_doc = "nothing answers at the host (or the proxy)",
  },
  timeout = {
    what = "no answer within the time (the exchange's `timeout`, the call's `deadline`); a push "
      .. "channel silent for `heartbeat_timeout` (`silent`)",
    retried = "yes", retryable = always,
    state = function(err)
      if err.state then return err.state end -- a session not ready in time: the last state seen
      if err.late then return nil end        -- the call's deadline, spent before an attempt
      return "down"
    end,
    state_doc = "`down`; `err.state` when the session did not become ready in time; none when `late`",
    exit_doc = "2 / per state",
    hint = timeout_hint,
    hint_doc = "no answer in time; a session that stayed not ready after a repair; a silent websocket; "
      .. "none when `late`",
  },
  tls = {
    what = "the TLS handshake or the certificate check failed (`verify_result`, `not_after`)",
    retried = "no", retryable = never, state = "tls", hint = tls_hint,
    hint_doc = "host not named, CA file unusable, certificate expired (when), not yet valid, not signed "
      .. "by the CA file, self-signed, no TLS spoken",
  },
  protocol = {
    what = "not a valid HTTP answer; a connection dropped or reset",
    retried = "when dropped before any answer (`no_response`)", retryable = M.no_response,
    state = "error", hint = https_hint,
    hint_doc = "over http://: an empty or non-HTTP reply may be an HTTPS gateway",
  },
  http = {
    what = "a non-2xx answer (`status`), redirects included; status 200 for a 2xx body the helpers refused",
    retried = "429 and 503",
    retryable = function(err) return err.status == 429 or err.status == 503 end,
    state = function(err)
      if says_no_session(err) or M.is_login_redirect(err) then return "no_session" end
      if err.status == 401 then
        -- ssodh/init's 401 (IBKR's edge) is no proof the session is gone: auth/status decides
        if err.path == "/iserver/auth/ssodh/init" then return nil end
        return "no_session"
      end
      if M.says_wait(err) then return nil end
      return "error"
    end,
    state_doc = "`no_session` (401 but ssodh/init's, `{\"error\":\"no session\"}`, login redirect); none "
      .. "(429, 503 with Retry-After, ssodh/init's 401); else `error`",
    exit_doc = "3 / 1",
    hint = http_hint,
    hint_doc = "login required; ssodh/init refused; no /v1/api in the URL; brokerage session not open "
      .. "(400 `Init session first`, `no bridge`); access denied; pacing; the wait Retry-After asks; a "
      .. "failing gateway; HTTPS "
      .. "(only when the answer says so)",
  },
  json = {
    what = "a 2xx answer whose body is not JSON",
    retried = "no", retryable = never, state = "error", hint = json_hint,
    hint_doc = "a web page: the URL is not the API's",
  },
  too_large = {
    what = "an answer larger than `max_body`; a websocket message larger than `max_message`",
    retried = "no", retryable = never, state = "error", hint_doc = "none",
  },
  rate_limited = {
    what = "refused without sending: the client's pacing, or a hold (`retry_after`)",
    retried = "no", retryable = never, state = nil,
    hint = function(err)
      if err.retry_after then
        return string.format("the gateway asked to wait: try again in %.0f s", err.retry_after)
      end
    end,
    hint_doc = "when to try again",
  },
  closed = {
    what = "the session was closed (also in the middle of a call), the keep-alive stopped, a stream or "
      .. "a websocket closed here",
    retried = "no", retryable = never, state = nil, hint_doc = "none",
  },
  auth = {
    what = "OAuth: a token (1.0a's live session token, 2.0's access token or SSO session) refused "
      .. "or unverifiable",
    retried = "no (token requests back off)", retryable = never,
    state = function(err) return says_no_session(err) and "no_session" or "error" end,
    state_doc = "`error`", exit_doc = "1",
    hint = auth_hint,
    hint_doc = "unknown consumer key; refused credentials; a web page; the hold after repeated refusals",
  },
  busy = {
    what = "`ibkr.core` only: a request's result asked for before it finished",
    retried = "no", retryable = never, state = nil, hint_doc = "none",
  },
  callback = {
    what = "`on_error` of a keep-alive or a stream only: a callback raised",
    retried = "no", retryable = never, state = nil, hint_doc = "none",
  },
  hangup = {
    what = "push channel: the gateway ended the websocket (its close frame: `close_code`, or the "
      .. "connection's end without one)",
    retried = "the stream reconnects (backoff)", retryable = never, state = nil, hint = hangup_hint,
    hint_doc = "close 1008 (a stale session id), 1001 (going away), 1000 (session ended), no close frame",
  },
  not_ready = {
    what = "push channel: the session is not authenticated (`state`): the stream waits for a repair",
    retried = "the stream, once the session is ready", retryable = never,
    state = function(err) return err.state end, state_doc = "`state`", exit_doc = "per state",
    hint = function(err, ctx) return state_hint(err.state, ctx) end,
    hint_doc = "as for the state",
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
  "closed", "auth", "busy", "callback", "hangup", "not_ready" }

-- The rows of docs/ibkr.md's table of kinds, as they must appear there.
function M.doc_rows()
  local rows = {
    "| kind | when | retried | state | CLI exit | hint names |",
    "|---|---|---|---|---|---|",
  }
  for _, name in ipairs(M.ORDER) do
    local k = M.KINDS[name]
    local st = k.state_doc or (type(k.state) == "string" and "`" .. k.state .. "`") or "none (unchanged)"
    local exit = k.exit_doc or tostring(M.exit_code(type(k.state) == "string" and k.state or "error"))
    rows[#rows + 1] = string.format("| `%s` | %s | %s | %s | %s | %s |", name, k.what, k.retried, st, exit,
      k.hint_doc or "none")
  end
  return rows
end

return M
