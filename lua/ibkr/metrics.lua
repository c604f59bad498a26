-- ibkr.metrics: a session's figures (s:stats()) in the Prometheus text exposition format 0.0.4,
-- for ibkr-session keepalive --listen's /metrics and for hosts that serve them their own way
-- (docs/ibkr.md, "Metrics"). Pure functions: no I/O, no clock.
--
--   metrics.families(stats [, opts]) -> list of families built from a s:stats() table
--     opts.push = true: the push channel's families even before the channel filled them
--   metrics.family(name, type, help) -> a family to add samples to: fam:add(value, labels)
--     (labels: a list of {name, value} pairs, in the order they are written)
--   metrics.render(families) -> the exposition text (# HELP and # TYPE once per family)
--   metrics.text(stats [, opts]) -> render(families(stats, opts))
--   metrics.CONTENT_TYPE  the Content-Type of that text

local state = require("ibkr.state")

local M = {}

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

local Family = {}
Family.__index = Family

function M.family(name, mtype, help)
  assert(name:match("^[%a_:][%w_:]*$"), "metrics: bad metric name")
  assert(mtype == "counter" or mtype == "gauge", "metrics: type must be counter or gauge")
  return setmetatable({ name = name, type = mtype, help = help, samples = {} }, Family)
end

function Family:add(value, labels)
  self.samples[#self.samples + 1] = { value = value, labels = labels }
  return self
end

-- Label values and HELP texts escaped by the format's rules: backslash, newline (and in label
-- values the double quote) as \\, \n, \".
local ESC = { ["\\"] = "\\\\", ["\n"] = "\\n", ['"'] = '\\"' }
local function label_value(v) return (tostring(v):gsub('[\\\n"]', ESC)) end
local function help_text(v) return (tostring(v):gsub("[\\\n]", ESC)) end

-- A sample value: integers as they are, floats with 15 significant digits, and the format's
-- words for NaN and the infinities. A boolean is 1 or 0.
local function value_text(v)
  if type(v) == "boolean" then return v and "1" or "0" end
  if math.type(v) == "integer" then return string.format("%d", v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  return string.format("%.15g", v)
end

function M.render(families)
  local out = {}
  for _, f in ipairs(families) do
    out[#out + 1] = "# HELP " .. f.name .. " " .. help_text(f.help) .. "\n"
    out[#out + 1] = "# TYPE " .. f.name .. " " .. f.type .. "\n"
    for _, smp in ipairs(f.samples) do
      local line = f.name
      if smp.labels and #smp.labels > 0 then
        local parts = {}
        for i, l in ipairs(smp.labels) do
          assert(l[1]:match("^[%a_][%w_]*$"), "metrics: bad label name")
          parts[i] = l[1] .. '="' .. label_value(l[2]) .. '"'
        end
        line = line .. "{" .. table.concat(parts, ",") .. "}"
      end
      out[#out + 1] = line .. " " .. value_text(smp.value) .. "\n"
    end
  end
  return table.concat(out)
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t or {}) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

local function requests(st)
  local f = M.family("ibkr_requests_total", "counter",
    "Exchanges with the gateway, by session endpoint (\"other\": any other path) and outcome "
    .. "(ok, http_<status>, or the error kind)")
  for _, ep in ipairs(sorted_keys(st.by_endpoint)) do
    for _, oc in ipairs(sorted_keys(st.by_endpoint[ep])) do
      f:add(st.by_endpoint[ep][oc], { { "endpoint", ep }, { "outcome", oc } })
    end
  end
  return f
end

local function counter(name, help, v) return M.family(name, "counter", help):add(v or 0) end
local function gauge(name, help, v) return M.family(name, "gauge", help):add(v) end

-- The session's families, from a s:stats() table.
function M.families(st, opts)
  local fams = {}
  local function add(f) fams[#fams + 1] = f end
  local f = M.family("ibkr_session_state", "gauge",
    "The session's state as last observed: 1 for the current state, 0 for the others")
  for _, name in ipairs(state.STATES) do f:add(st.state == name and 1 or 0, { { "state", name } }) end
  add(f)
  add(counter("ibkr_session_state_changes_total", "Changes of the observed state after the first",
    st.state_changes))
  if st.state_age then
    add(gauge("ibkr_session_state_age_seconds", "Seconds since the session entered its current state",
      st.state_age))
  end
  add(requests(st))
  add(counter("ibkr_retries_total", "Attempts repeated after a retryable failure", st.retries))
  add(counter("ibkr_rate_limited_total",
    "429 answers, and calls held back by pacing or by the gateway's Retry-After", st.rate_limited))
  add(counter("ibkr_paced_total", "Calls that waited for the client's pacing", st.paced))
  f = M.family("ibkr_repairs_total", "counter",
    "Repair actions taken: calls of ssodh/init (init_brokerage) and reauthenticate")
  for _, action in ipairs{ "init_brokerage", "reauthenticate" } do
    f:add((st.repairs or {})[action] or 0, { { "action", action } })
  end
  add(f)
  if st.last_success_age then
    add(gauge("ibkr_last_success_age_seconds", "Seconds since the gateway last answered with a 2xx",
      st.last_success_age))
  end
  if st.sso_expires then
    add(gauge("ibkr_sso_expires_seconds",
      "Seconds left of the SSO session, as the gateway last said (tickle ssoExpires, validate EXPIRES)",
      st.sso_expires))
  end
  if st.connects then
    add(counter("ibkr_connections_total", "TCP connections opened to the gateway", st.connects))
  end
  if (opts and opts.push) or st.push_connected ~= nil then
    add(gauge("ibkr_push_connected", "1 while the push channel (websocket) is open",
      st.push_connected == true))
    add(counter("ibkr_push_reconnects_total", "Times the push channel connected again after a loss",
      st.push_reconnects))
  end
  return fams
end

function M.text(st, opts) return M.render(M.families(st, opts)) end

return M
