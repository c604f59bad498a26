-- ibkr-session's diagnoses: what a failure most likely means and what to do about it.
-- Pure functions of the error (or state) and the command line; no I/O.

local out = require("ibkr.cli.out")

local M = {}

-- scheme, host:port and path of a base URL (nil when it does not parse)
local function split_url(url)
  local scheme, hostport, path = tostring(url):match("^(%a[%w+.-]*)://([^/?#]*)([^?#]*)")
  if not scheme then return nil end
  hostport = hostport:gsub("^.*@", "") -- never repeat credentials
  return scheme:lower(), hostport, path
end

-- The gateway's root URL, where a browser logs in ("https://localhost:5000/").
function M.login_url(url)
  local scheme, hostport = split_url(url)
  if not scheme then return "the gateway's root URL" end
  return scheme .. "://" .. hostport .. "/"
end

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

-- A hint line (without "hint: ") for a failed call's error, or nil.
-- ctx: { url = base URL, cacert = FILE or nil, url_from_env = bool, timeout = seconds or nil }
function M.for_error(err, ctx)
  local scheme, hostport, path = split_url(ctx.url)
  local kind = err.kind
  if kind == "auth" then return err.hint end -- OAuth: the signer's diagnosis (ibkr/oauth2.lua)
  if kind == "tls" then return tls_hint(err, ctx) end
  local data = type(err.data) == "table" and err.data or {}
  if kind == "http" and (err.status == 401 or data.error == "no session") then
    return M.for_state("no_session", ctx)
  end
  if kind == "http" and err.status == 404 and path and not path:find("/v1/api", 1, true) then
    return "the URL has no /v1/api: the gateway serves the API below it, e.g. --url "
      .. (scheme or "https") .. "://" .. (hostport or "localhost:5000") .. "/v1/api"
  end
  if scheme == "http" and (kind == "protocol" or (kind == "http" and err.status == 400)) then
    return "the gateway may speak HTTPS (the Client Portal Gateway does by default): try --url https://"
      .. hostport .. path
  end
  if kind == "connect" and ctx.proxy then
    return "nothing answers through the proxy " .. out.text(ctx.proxy, 200)
      .. ": is the proxy running (and can it reach "
      .. tostring(hostport) .. ")?"
  end
  if kind == "connect" then
    local where = ctx.url_from_env and " ($IBKR_BASE_URL)" or ""
    return "nothing answers at " .. tostring(hostport) .. where
      .. ": is the gateway running, and is the URL right?"
  end
  if kind == "timeout" then
    return "the gateway did not answer in time: it may be hung or restarting (a longer --timeout lets "
      .. "the gateway's own answer through)"
  end
  if kind == "rate_limited" and err.retry_after then
    return string.format("the gateway asked to wait: try again in %.0f s", err.retry_after)
  end
  return nil
end

-- A hint for a state that is not ready, or nil.
function M.for_state(st, ctx)
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

return M
