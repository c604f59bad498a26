-- Session states and the meaning of the gateway's answers, exactly as s:health(), the keep-alive
-- and the CLI report them:
--   states: "ready", "competing", "unauthenticated", "disconnected", "no_session", "down", "tls",
--           "error"
--   judge(endpoint, body): whether a 2xx body of a session endpoint means success.
-- Pure functions of bodies and error objects: no network, no clock.
-- Gateway facts: docs/gateway-facts.md §1.2–1.8 and "Field reports".

local core = require("ibkr.core")
local kinds = require("ibkr.kinds")

local M = {}

M.MAX_TEXT = 200 -- bytes of a gateway text kept in a reason

-- Every state a session can be in, best first (what s:health() and the keep-alive report).
M.STATES = { "ready", "competing", "unauthenticated", "disconnected", "no_session", "down", "tls", "error" }

-- A gateway text made one bounded, printable line: runs of white space (CR and LF included)
-- become one space; the rest is core.printable's (other control bytes escaped, long texts cut
-- on a character boundary with "…").
function M.text(s)
  if type(s) ~= "string" then return nil end
  s = s:gsub("%s+", " "):match("^%s*(.-)%s*$")
  if s == "" then return nil end
  return core.printable(s, M.MAX_TEXT) -- the core's rules: other controls escaped, cut on a character
end

-- What a body that is not JSON is, as one bounded line for a message: "an empty body", "an HTML
-- page titled \"…\"", "an HTML page", or "text: …" (its first words).
function M.body_text(body)
  if type(body) ~= "string" or body:match("^%s*$") then return "an empty body" end
  if body:match("^%s*<") then
    local title = body:match("<[Tt][Ii][Tt][Ll][Ee][^>]*>(.-)</[Tt][Ii][Tt][Ll][Ee]")
      or body:match("<[Hh]1[^>]*>(.-)</[Hh]1")
    title = title and M.text((title:gsub("<[^>]*>", "")))
    return title and ("an HTML page titled \"" .. title .. "\"") or "an HTML page"
  end
  return "text: " .. (M.text(body) or "")
end

-- Whether v is a JSON object as decoded (a table that is not an array).
local ARRAY_MT = rawget(core, "array_mt")
local function is_object(v)
  if type(v) ~= "table" then return false end
  if ARRAY_MT ~= nil and getmetatable(v) == ARRAY_MT then return false end
  return v[1] == nil
end

-- A short description of a JSON value that is not an object, for reasons.
local function shape(v)
  if v == nil or v == core.null then return "null" end
  if type(v) == "table" then return "an array" end
  if type(v) == "string" then return "a string" end
  return type(v) .. " " .. tostring(v)
end

-- The gateway's own words in an object body: `error`, then `fail`, then `message` (the first
-- non-empty one), as one bounded line; nil when it said nothing.
function M.said(body)
  if not is_object(body) then return nil end
  return M.text(body.error) or M.text(body.fail) or M.text(body.message)
end

-- A brokerage status (auth/status, ssodh/init) must carry `authenticated` (the gateway always
-- sends it, even logged out: facts §1.2); `fail` carries the reason of a failure (field report
-- ibeam #73).
local function judge_status(body, with_fail)
  local a = body.authenticated -- a boolean (true or false: no type() call on every answer)
  if a ~= true and a ~= false then return false, "no authenticated in the answer" end
  if with_fail and M.text(body.fail) then return false, M.text(body.fail) end
  return true
end

local JUDGES = {
  auth_status = judge_status, -- with_fail nil
  init_brokerage = function(body) return judge_status(body, true) end,
  -- tickle: {"error": ...} is the failed tickle of IBKR's OpenAPI spec; an object without it is
  -- a tickle the gateway took (its iserver.authStatus, when present, gives the state).
  tickle = function() return true end,
  sso_validate = function(body)
    if body.RESULT == nil then return false, "no RESULT in the answer" end
    if body.RESULT ~= true then
      return false, "RESULT is " .. tostring(body.RESULT) .. (M.said(body) and (": " .. M.said(body)) or "")
    end
    return true
  end,
  -- {"status":true} today; {"confirmed":true} in the legacy spec (facts §1.5).
  logout = function(body)
    if body.status == true or body.confirmed == true then return true end
    if body.status ~= nil then return false, "status is " .. tostring(body.status) end
    if body.confirmed ~= nil then return false, "confirmed is " .. tostring(body.confirmed) end
    return false, "no status in the answer"
  end,
  -- {"message":"triggered"}: the request was taken; it takes effect later (facts §1.6).
  reauthenticate = function(body)
    local msg = body.message -- "triggered" as it comes; another case without making a lower-case copy
    if msg == "triggered" or (type(msg) == "string" and #msg == 9 and msg:lower() == "triggered") then
      return true
    end
    local m = M.text(body.message)
    return false, m and ("message is \"" .. m .. "\", not \"triggered\"") or "no message in the answer"
  end,
}
M.ENDPOINTS = { "auth_status", "tickle", "sso_validate", "logout", "reauthenticate", "init_brokerage" }

-- judge(endpoint, body) -> ok, why
-- Whether `body`, the decoded 2xx answer of the session endpoint `endpoint` (one of M.ENDPOINTS,
-- the names of the session's calls), means success. When not, `why` is a short printable reason
-- taken from what the gateway said ("failed to process request", "RESULT is false",
-- "no authenticated in the answer", "answer is null, not a JSON object"...).
-- Rules, per endpoint (docs/ibkr.md, "What each answer means"):
--   every endpoint: the body is a JSON object, without a top-level `error`
--   auth_status     `authenticated` present (a boolean)
--   init_brokerage  `authenticated` present, `fail` empty
--   tickle          nothing more
--   sso_validate    `RESULT` is true
--   logout          `status` is true (or the legacy `confirmed` is true)
--   reauthenticate  `message` is "triggered"
-- Raises for an unknown endpoint name (a programmer error).
-- judge() once the endpoint's rules j are known; also of_answer's first step. The top-level
-- `error` of a body is a reason (`error: false`/`""` are no error).
local function judged(j, body)
  if not is_object(body) then return false, "answer is " .. shape(body) .. ", not a JSON object" end
  local e = body.error
  if e ~= nil and e ~= false and e ~= "" then return false, M.text(e) or "an error in the answer" end
  return j(body)
end

function M.judge(endpoint, body)
  local j = JUDGES[endpoint]
  if not j then error("state.judge: unknown endpoint '" .. tostring(endpoint) .. "'", 2) end
  return judged(j, body)
end

-- State of a brokerage status table (the body of /iserver/auth/status, ssodh/init, or the
-- iserver.authStatus of a tickle). The checks go from the outermost failure inwards, as ibeam
-- does: no session, not connected, competing, then authentication. Authenticated but not yet
-- `established` counts as unauthenticated: the brokerage session cannot serve requests yet.
-- Any other JSON value (null, a number, an array...) is "error".
-- of_status of a table known to be an object
local function status_of(st)
  if st.error == "no session" then return "no_session" end
  if st.connected == false then return "disconnected" end
  if st.competing == true then return "competing" end
  if st.authenticated == true and st.established ~= false then return "ready" end
  if st.authenticated ~= nil or st.connected ~= nil then return "unauthenticated" end
  return "error" -- neither key: not a status body (e.g. {"error":"failed to process request"})
end

function M.of_status(st)
  if not is_object(st) then return "error" end
  return status_of(st)
end

-- How far from ready the states of a reachable gateway are: their places in M.STATES (best first:
-- a competing login, then lost authentication, a lost backend connection, no session at all);
-- down, tls and error are off that ladder.
local DEPTH = {}
for i, st in ipairs(M.STATES) do
  DEPTH[st] = i
  if st == "no_session" then break end
end

-- Whether `new` is worse news than `old` about a reachable gateway: deeper on that ladder, or
-- `old` unknown or off it (down, tls, error). The push channel tells drops only (IBKR never
-- pushes a recovery), so a pushed state that is not worse than what REST said is stale.
function M.worse(new, old)
  local n, o = DEPTH[new], DEPTH[old]
  return n ~= nil and (o == nil or n > o)
end

-- What a failed call's error means is the registry's (ibkr/kinds.lua): these are its answers.
-- is_login_redirect(err): a redirect to the gateway's SSO login pages (only a browser login helps).
-- says_wait(err): the gateway (or a Retry-After hold) saying "not now": a 429, a 503 with
-- Retry-After, a call refused without sending. Such an answer says nothing about the state.
-- of_error(err): the state of a failed call, as s:health() reports it.
M.is_login_redirect = kinds.is_login_redirect
M.says_wait = kinds.says_wait
M.of_error = kinds.state

-- refusal(method, path, body, why) -> error object for a 2xx answer that judge() refused:
-- kind "http", status 200, `data` = the body when it is a table, message `why` (tostring(err)
-- adds method and path).
function M.refusal(method, path, body, why)
  return core.error{ kind = "http", status = 200, method = method, path = path,
    data = type(body) == "table" and body or nil, refused = true,
    message = why }
end

-- of_answer(endpoint, body) -> state or nil, why, status
-- What a 2xx answer of a session endpoint says about the session: for a body judge() refuses,
-- "no_session" ({"error":"no session"}) or "error", with judge's reason; for a good status body
-- (auth_status, init_brokerage, a tickle carrying iserver.authStatus) its of_status(), and the
-- status table it read (the body, or the tickle's authStatus); nil when a good answer carries no
-- status (a tickle without authStatus, validate, logout, reauthenticate).
function M.of_answer(endpoint, body)
  local j = JUDGES[endpoint]
  if not j then error("state.of_answer: unknown endpoint '" .. tostring(endpoint) .. "'", 2) end
  local ok, why = judged(j, body)
  if not ok then
    return (is_object(body) and body.error == "no session") and "no_session" or "error", why
  end
  if endpoint == "auth_status" or endpoint == "init_brokerage" then return status_of(body), nil, body end
  if endpoint == "tickle" then
    local st = M.tickle_status(body)
    if st then return status_of(st), nil, st end -- (tickle_status gives objects only)
  end
  return nil
end

-- The CLI's exit code for a state (contract, "The CLI"): 0 ready, 2 unreachable (down, tls),
-- 3 login required (no_session), 1 anything else the gateway answered.
M.exit_code = kinds.exit_code

-- The status table carried by a tickle body, or nil (then ask /iserver/auth/status).
function M.tickle_status(body)
  local is = is_object(body) and body.iserver
  local st = is_object(is) and is.authStatus
  if is_object(st) then return st end
  return nil
end

return M
