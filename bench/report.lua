-- Turns the raw lines of a `make bench` run into the markdown table and the target check.
-- usage: lua5.4 bench/report.lua RESULTS_FILE
-- Input lines: "proto=... peer=... scenario=... n=... wall_us=... cpu_us=... rss_kib=..." (one per
-- run), "mem ...", "stall ...", "hosts ..." (and other) lines (copied as they are).

local file = arg[1]
if not file then
  io.stderr:write("usage: report.lua RESULTS_FILE\n")
  os.exit(64)
end

local PEERS = { "raw", "lcurl", "core", "ibkr", "coop-run", "step-busy", "step-sleep", "luasocket",
  "luasocket-close" }
local LABEL = {
  raw = "raw C (libcurl easy, no decoding)",
  lcurl = "Lua-cURLv3 + lua-cjson (one easy handle)",
  core = "ours: ibkr.core perform",
  ibkr = "ours: ibkr (pacing=false)",
  ["coop-run"] = "ours: ibkr cooperative, driven by ibkr.run",
  ["step-busy"] = "ours: start/step, busy-stepped",
  ["step-sleep"] = "ours: start/step, sleeping the wait",
  luasocket = "luasocket http.open (keep-alive) + cjson",
  ["luasocket-close"] = "luasocket http.request (new conn/call) + cjson",
}

local runs, others = {}, {}
for line in io.lines(file) do
  if line:match("^proto=") then
    local r = {}
    for k, v in line:gmatch("([%w_]+)=(%S+)") do r[k] = tonumber(v) or v end
    local key = r.scenario .. "/" .. r.proto .. "/" .. r.peer
    runs[key] = runs[key] or {}
    table.insert(runs[key], r)
  elseif line:match("^mem ") or line:match("^stall ") or line:match("^thousand ")
      or line:match("^large ") or line:match("^hosts ") or line:match("^pacing ") or line:match("^cli_")
      or line:match("^mock_start ") then
    others[#others + 1] = line
  end
end

local function median(list, field)
  local v = {}
  for i, r in ipairs(list) do v[i] = r[field] end
  table.sort(v)
  local n = #v
  if n == 0 then return nil end
  if n % 2 == 1 then return v[(n + 1) / 2] end
  return (v[n / 2] + v[n / 2 + 1]) / 2
end

local out = {}
local function p(...) out[#out + 1] = string.format(...) end

p("| scenario | transport | peer | µs/call | × raw | client CPU µs/call | CPU × raw | peak RSS MiB"
  .. " | RSS − raw MiB | runs |")
p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
local checks = {}
for _, scen in ipairs{ "auth", "mixed" } do
  for _, proto in ipairs{ "http", "https" } do
    local base = runs[scen .. "/" .. proto .. "/raw"]
    local bw, bc, br
    if base then bw, bc, br = median(base, "wall_us"), median(base, "cpu_us"), median(base, "rss_kib") end
    for _, peer in ipairs(PEERS) do
      local list = runs[scen .. "/" .. proto .. "/" .. peer]
      if list then
        local w, c, r = median(list, "wall_us"), median(list, "cpu_us"), median(list, "rss_kib")
        local function ratio(a, b) return b and string.format("%.2f", a / b) or "–" end
        p("| %s | %s | %s | %.1f | %s | %.1f | %s | %.1f | %s | %d |", scen == "auth" and "auth_status" or
          "mixed cycle", proto, LABEL[peer], w, ratio(w, bw), c, ratio(c, bc), r / 1024,
          br and string.format("%+.1f", (r - br) / 1024) or "–", #list)
        local gen = runs[scen .. "/" .. proto .. "/lcurl"]
        if peer == "ibkr" and gen then
          local what = (scen == "auth" and "auth_status" or "mixed cycle") .. " over " .. proto
          local gw, gc = median(gen, "wall_us"), median(gen, "cpu_us")
          checks[#checks + 1] = { what .. ": time < Lua-cURLv3 + lua-cjson", w < gw,
            string.format("%.1f µs against %.1f (%.2f×)", w, gw, w / gw) }
          checks[#checks + 1] = { what .. ": client CPU < Lua-cURLv3 + lua-cjson", c < gc,
            string.format("%.1f µs against %.1f (%.2f×)", c, gc, c / gc) }
        end
        if peer == "ibkr" and bw then
          local what = (scen == "auth" and "auth_status" or "mixed cycle") .. " over " .. proto
          if proto == "http" then
            checks[#checks + 1] = { what .. ": time ≤ 1.15× raw", w / bw <= 1.15,
              string.format("%.2f×", w / bw) }
          end
          checks[#checks + 1] = { what .. ": time ≤ 1.10× raw", w / bw <= 1.10,
            string.format("%.2f×", w / bw) }
          checks[#checks + 1] = { what .. ": client CPU ≤ 1.15× raw", c / bc <= 1.15,
            string.format("%.2f×", c / bc) }
          checks[#checks + 1] = { what .. ": peak RSS ≤ raw + 3 MiB", r - br <= 3 * 1024,
            string.format("%+.1f MiB", (r - br) / 1024) }
        end
        local blk = runs[scen .. "/" .. proto .. "/ibkr"]
        if peer == "coop-run" and blk then
          local what = (scen == "auth" and "auth_status" or "mixed cycle") .. " over " .. proto
          local bkw, bkc = median(blk, "wall_us"), median(blk, "cpu_us")
          checks[#checks + 1] = { what .. ": cooperative via ibkr.run time ≤ 1.3× blocking", w / bkw <= 1.3,
            string.format("%.2f×", w / bkw) }
          checks[#checks + 1] = { what .. ": cooperative via ibkr.run CPU ≤ 1.3× blocking", c / bkc <= 1.3,
            string.format("%.2f×", c / bkc) }
        end
      end
    end
  end
end

for _, line in ipairs(others) do
  local kv = {}
  for k, v in line:gmatch("([%w_]+)=(%S+)") do kv[k] = tonumber(v) or v end
  if line:match("^mem growth") then
    checks[#checks + 1] = { "RSS growth 1k → N calls < 1 MiB (" .. kv.proto .. ")", kv.rss_kib < 1024,
      string.format("%+d KiB", kv.rss_kib) }
    checks[#checks + 1] = { "Lua heap flat 1k → N calls (" .. kv.proto .. ")", kv.live_kib < 16,
      string.format("%+.1f KiB live", kv.live_kib) }
  elseif line:match("^thousand ") then
    checks[#checks + 1] = { kv.sessions .. " sessions kept alive (" .. kv.proto .. "): no failed tickle, "
      .. "threads, fds, RSS, CPU per tickle", kv.errors == 0,
      string.format("%d tickles in %.0f s, %d errors; %d threads, %d fds, %.1f MiB RSS, %.0f µs CPU/tickle; "
        .. "all up in %.1f s", kv.tickles, kv.seconds, kv.errors, kv.threads, kv.fds, kv.rss_kib / 1024,
        kv.cpu_us_per_tickle, kv.startup_s or 0) }
  elseif line:match("^large ") then
    checks[#checks + 1] = { "large answer: decoded inside one resume, bound documented (docs/core.md)", true,
      string.format("%.1f MB in %.0f ms (%.1f ms/MB)", kv.bytes / 1e6, kv.decode_ms, kv.ms_per_mb) }
  elseif line:match("^stall ") then
    checks[#checks + 1] = { "keep-alive longest resume ≤ 1 ms while /tickle takes 2 s (" .. kv.proto .. ")",
      kv.longest_us <= 1000, string.format("%.0f µs", kv.longest_us) }
  elseif line:match("^hosts driver=none ") then
    checks[#checks + 1] = { "the same 10 ms timer alone, no keep-alive (" .. kv.proto .. "): what the "
      .. "machine adds", true, string.format("timer's longest gap %.1f ms", kv.gap_ms) }
  elseif line:match("^hosts ") then
    checks[#checks + 1] = { "ibkr." .. kv.driver .. ": longest resume ≤ 1 ms, the host's 10 ms timer "
      .. "kept time while tickles take 1 s (" .. kv.proto .. ")", kv.longest_us <= 1000,
      string.format("%.0f µs; timer's longest gap %.1f ms, %d of %d ticks during requests; %d resumes for %d "
        .. "tickles", kv.longest_us, kv.gap_ms, kv.beats_in_flight, kv.beats, kv.resumes, kv.tickles) }
  elseif line:match("^pacing ") then
    checks[#checks + 1] = { kv.calls .. " calls at the default pacing: none answered 429 by the mock's "
      .. "count (" .. kv.proto .. ")", kv.rate_limited == 0 and kv.arrivals == kv.calls,
      string.format("%d answered 429, %d arrivals", kv.rate_limited, kv.arrivals) }
  elseif line:match("^mock_start ") then
    checks[#checks + 1] = { "the mock gateway starts with TLS well under a second", kv.worst_ms < 1000,
      string.format("worst %d ms of %d", kv.worst_ms, kv.runs) }
  elseif line:match("^cli_timeout ") then
    checks[#checks + 1] = { "ibkr-session ends within --timeout + 0.5 s against a hung gateway",
      kv.worst_over_ms <= 500, string.format("worst +%d ms over %d runs", kv.worst_over_ms, kv.runs) }
  elseif line:match("^cli_signal ") then
    checks[#checks + 1] = { "ibkr-session keepalive ends within 1 s of SIGTERM/SIGINT",
      kv.worst_ms <= 1000, string.format("worst %d ms over %d runs", kv.worst_ms, kv.runs) }
  end
end

p("")
p("```")
for _, line in ipairs(others) do p("%s", line) end
p("```")
p("")
p("| target | met | measured |")
p("|---|---|---|")
for _, c in ipairs(checks) do p("| %s | %s | %s |", c[1], c[2] and "yes" or "**no**", c[3]) end

io.write(table.concat(out, "\n"), "\n")
