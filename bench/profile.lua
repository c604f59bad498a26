-- The arithmetic of `sh bench/run.sh profile`: the marginal cost of one call from two runs of a
-- peer (a short one and one with N more calls), so that start-up and teardown cancel out.
--
-- usage: lua5.4 bench/profile.lua WHAT SHORT LONG N
--   ir       SHORT, LONG: callgrind output files -> instructions (Ir) per call
--   objects  the same, split by object (libcurl, libc, the Lua VM, ibkr/core.so...): the objects
--            above 1 % of a call, "libcurl 61.1k, libc 22.5k, ..."
--   perf     SHORT, LONG: `perf stat -x, -e context-switches -o FILE` outputs -> switches per call
--   strace   SHORT, LONG: `strace -c -f -o FILE` outputs -> "5.30 (poll 3.30, sendto 1.00, ...)"

local what, short, long, n = arg[1], arg[2], arg[3], tonumber(arg[4])
if not (what and short and long and n and n > 0) then
  io.stderr:write("usage: profile.lua ir|objects|perf|strace SHORT LONG N\n")
  os.exit(64)
end

local function lines(file)
  local f = assert(io.open(file, "r"))
  local t = {}
  for l in f:lines() do t[#t + 1] = l end
  f:close()
  return t
end

-- callgrind's total: the "totals:" (or "summary:") line
local function total(file)
  local sum
  for _, l in ipairs(lines(file)) do
    sum = tonumber(l:match("^totals:%s*(%d+)")) or sum or tonumber(l:match("^summary:%s*(%d+)"))
  end
  return assert(sum, file .. ": no callgrind totals")
end

-- Self cost per object: cost lines belong to the current "ob=" (names are compressed as "(id)
-- name" the first time, in "ob=" or "cob=", "(id)" after); the line after "calls=" is a
-- callee's inclusive cost and is skipped.
local function by_object(file)
  local names, cost, ob, skip = {}, {}, "?", false
  for _, l in ipairs(lines(file)) do
    if skip then
      skip = false
    elseif l:match("^calls=") then
      skip = true
    else
      local kind, id, name = l:match("^(c?ob)=%((%d+)%)%s*(.*)$")
      if id then
        if name ~= "" then names[id] = name end
        if kind == "ob" then ob = names[id] or id end
      elseif l:match("^ob=") then
        ob = l:sub(4)
      elseif not l:match("^%a+=") then
        local c = l:match("^[%d+*-]%S*%s+(%d+)")
        if c then cost[ob] = (cost[ob] or 0) + tonumber(c) end
      end
    end
  end
  return cost
end

local function short_name(path)
  local base = path:match("([^/]+)$") or path
  base = base:gsub("%.so.*$", "")
  if path:match("ibkr/core%.so$") then return "ibkr/core.so" end
  if base:match("^lua5%.4$") then return "Lua VM" end
  return base
end

if what == "ir" then
  print(string.format("%.0f", (total(long) - total(short)) / n))
elseif what == "objects" then
  local a, b = by_object(short), by_object(long)
  local all = (total(long) - total(short)) / n
  local rows = {}
  for ob, c in pairs(b) do
    local d = (c - (a[ob] or 0)) / n
    if d >= all / 100 then rows[#rows + 1] = { short_name(ob), d } end
  end
  table.sort(rows, function(x, y) return x[2] > y[2] end)
  local out = {}
  for i, r in ipairs(rows) do out[i] = string.format("%s %.1fk", r[1], r[2] / 1000) end
  print(table.concat(out, ", "))
elseif what == "perf" then
  local function switches(file)
    for _, l in ipairs(lines(file)) do
      local v = l:match("^(%d+),[^,]*,context%-switches")
      if v then return tonumber(v) end
    end
    error(file .. ": no context-switches count")
  end
  print(string.format("%.2f", (switches(long) - switches(short)) / n))
elseif what == "strace" then
  local function calls(file)
    local t = {}
    for _, l in ipairs(lines(file)) do
      local f = {}
      for w in l:gmatch("%S+") do f[#f + 1] = w end
      if #f >= 5 and tonumber(f[1]) and tonumber(f[4]) and f[#f] ~= "total" then t[f[#f]] = tonumber(f[4]) end
    end
    return t
  end
  local a, b = calls(short), calls(long)
  local rows, sum = {}, 0
  for name, c in pairs(b) do
    local d = (c - (a[name] or 0)) / n
    sum = sum + d
    if d >= 0.01 then rows[#rows + 1] = { name, d } end
  end
  table.sort(rows, function(x, y) return x[2] > y[2] end)
  local out = {}
  for i, r in ipairs(rows) do out[i] = string.format("%s %.2f", r[1], r[2]) end
  print(string.format("%.2f (%s)", sum, table.concat(out, ", ")))
else
  io.stderr:write("profile.lua: unknown " .. what .. "\n")
  os.exit(64)
end
