-- docs/reference.md against what the library offers, both ways: every name the modules export (the
-- module ibkr, a session's methods, ibkr.luv, ibkr.cqueues and their handle, ibkr.state,
-- ibkr.kinds, ibkr.metrics), every field of meta, of a trace event and of an error object the
-- sources write, and every command, option and exit code of ibkr-session has an entry on the page;
-- every entry names something that exists. An entry is a `###` heading or the first cell of a table
-- row that starts with a name in backticks. Entries marked *pending* (the push channel, being built
-- elsewhere) may name what does not exist yet, and must lose the mark once it does.
--
-- (spec/docs_names_spec.lua checks the names every document mentions in its prose, this page's
-- too; this one checks that the reference is complete and holds nothing else.)
local ibkr = require("ibkr")
local args = require("ibkr.cli.args")

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

---------------------------------------------------------------------------------------------
-- The page's entries

-- The page's short names of modules (`local state = require("ibkr.state")`)
local ALIASES = { state = "ibkr.state", kinds = "ibkr.kinds", metrics = "ibkr.metrics" }

-- Entries of a markdown text: { name =, line =, pending =, table = the header's first cell }.
-- A heading "### `sig`" gives one; a table row gives one per backticked name in its first cell.
local function entries_of(text)
  local list, header, lineno = {}, nil, 0
  local in_code = false
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if line:match("^```") then in_code = not in_code end
    if not in_code then
      local sig = line:match("^###%s+`([^`]+)`")
      if sig then
        list[#list + 1] = { sig = sig, line = lineno, pending = line:find("*pending*", 1, true) ~= nil }
      end
      local first = line:match("^|%s*(.-)%s*|")
      if first then
        first = first:match("^(.-)→") or first -- the names, not what they return
        if not header then
          header = first
        elseif not first:match("^%-+$") then
          for s in first:gmatch("`([^`]+)`") do
            list[#list + 1] = { sig = s, line = lineno, table = header,
              pending = line:find("*pending*", 1, true) ~= nil }
          end
        end
      else
        header = nil
      end
    end
  end
  for _, e in ipairs(list) do
    -- the name: `ibkr.new(opts)` -> ibkr.new, `s:tickle{...}` -> s:tickle, `--url` -> --url, `0` -> 0,
    -- `require("ibkr.luv").drive(x)` -> ibkr.luv.drive, `state.judge(...)` -> ibkr.state.judge (the
    -- page's `local state = require("ibkr.state")`, and kinds likewise)
    local mod, member = e.sig:match('^require%("(ibkr[%w_.]*)"%)%.([%a_][%w_]*)')
    e.name = mod and (mod .. "." .. member) or e.sig:match("^([%a_][%w_.:]*)")
      or e.sig:match("^(%-%-?[%w%-]+)") or e.sig:match("^(%d+)$")
    local alias, rest = (e.name or ""):match("^(%a+)%.([%w_]+)$")
    if ALIASES[alias] then e.name = ALIASES[alias] .. "." .. rest end
  end
  return list
end

local PAGE = "docs/reference.md"

-- name -> entry, for the entries whose name matches `pattern` (captures the member); `tbl` only
-- entries of tables whose header is that
local function documented(entries, pattern, tbl)
  local out = {}
  for _, e in ipairs(entries) do
    local m = e.name and e.name:match(pattern)
    if m and (tbl == nil or e.table == tbl) then out[m] = e end
  end
  return out
end

---------------------------------------------------------------------------------------------
-- What exists

local function public_keys(t, methods_only)
  local out = {}
  for k, v in pairs(t) do
    if type(k) == "string" and not k:match("^_[%l_]") and not k:match("^__")
        and (not methods_only or type(v) == "function") then
      out[k] = true
    end
  end
  return out
end

-- The table of an object's methods: its metatable's __index table, or itself
local function methods_of(obj)
  local mt = getmetatable(obj)
  if type(mt) == "table" and type(mt.__index) == "table" then return mt.__index end
  return obj
end

-- Field names of meta: a real one
local function meta_fields()
  local m = require("ibkr.meta").new(200, "HTTP/1.1 200 OK\r\nX: y\r\n\r\n")
  local out = {}
  for k in pairs(m) do out[k] = true end
  return out
end

-- The fields of `var` that `src` assigns: `var.a = ...`, `var.a, var.b = ...` (not `var.a == b`)
local function assigned(src, var, out)
  local pat = "%f[%w_]" .. var .. "%.([%a_][%w_]*)()"
  local at = 1
  while true do
    local s, _, name, after = src:find(pat, at)
    if not s then return out end
    local names, pos = { name }, after
    while true do -- a list of targets: ", var.b"
      local n2, a2 = src:match("^%s*,%s*" .. var .. "%.([%a_][%w_]*)()", pos)
      if not n2 then break end
      names[#names + 1], pos = n2, a2
    end
    if src:find("^%s*=[^=]", pos) then
      for _, n in ipairs(names) do out[n] = true end
    end
    at = after
  end
end

-- Field names a trace event gets: the keys lua/ibkr/trace.lua writes into `ev` (its one table
-- constructor and its `ev.x = ` assignments)
local function trace_fields()
  local src = read("lua/ibkr/trace.lua")
  local out = {}
  local ctor = src:match("local ev = (%b{})")
  for k in ctor:sub(2, -2):gsub("%b()", ""):gmatch("([%a_][%w_]*)%s*=[^=]") do out[k] = true end
  return assigned(src, "ev", out)
end

-- Field names the library writes into error objects: the C core's (src/*.c: error_push's kind,
-- message, method, path; error_seti/error_sets; a field set on the error in src/request.c) and the
-- Lua layer's (core.error{...} constructors and err.x assignments in lua/ibkr/, the CLI's too)
local function error_fields()
  local out = { kind = true, message = true, method = true, path = true }
  for f in sh("ls src/*.c"):gmatch("[^\n]+") do
    for k in read(f):gmatch('error_set[is]%(L, "([%w_]+)"') do out[k] = true end
  end
  for k in read("src/request.c"):gmatch('lua_setfield%(L, %-2, "([%w_]+)"%)') do out[k] = true end
  for f in sh("ls lua/ibkr/*.lua lua/ibkr/cli/*.lua"):gmatch("[^\n]+") do
    local s = read(f)
    for body in s:gmatch("core%.error(%b{})") do
      for k in body:sub(2, -2):gsub("%b{}", ""):gsub("%b()", ""):gmatch("([%a_][%w_]*)%s*=[^=]") do
        out[k] = true
      end
    end
    assigned(s, "err", out)
  end
  return out
end

-- The exit codes ibkr-session's usage states
local function exit_codes()
  local out = {}
  local block = args.USAGE:match("exit codes:\n(.*)$")
  for line in block:gmatch("[^\n]+") do
    local codes = line:match("^%s%s(%d[%d, ]*)%s%s")
    for c in (codes or ""):gmatch("%d+") do out[c] = true end
  end
  return out
end

---------------------------------------------------------------------------------------------

-- The differences of `have` (name -> true) and `doc` (name -> entry) as failure lines
local function compare(what, have, doc, failures, prefix)
  prefix = prefix or ""
  for k in pairs(have) do
    if not doc[k] then
      failures[#failures + 1] = string.format("%s: %s%s exists but has no entry", what, prefix, k)
    elseif doc[k].pending then
      failures[#failures + 1] = string.format("%s:%d: %s%s exists now: write its entry out and drop "
        .. "*pending*", PAGE, doc[k].line, prefix, k)
    end
  end
  for k, e in pairs(doc) do
    if not have[k] and not e.pending then
      failures[#failures + 1] = string.format("%s:%d: %s%s has an entry but does not exist (%s)", PAGE,
        e.line, prefix, k, what)
    end
  end
end

local function report(failures)
  table.sort(failures)
  return #failures .. " differences between docs/reference.md and the library:\n  "
    .. table.concat(failures, "\n  ")
end

-- Checks `text` as if it were the page; returns the failure lines.
local function check_page(text)
  local entries = entries_of(text)
  local f = {}
  compare("require(\"ibkr\")", public_keys(ibkr), documented(entries, "^ibkr%.([%a_][%w_]*)$"), f, "ibkr.")
  compare("a session's methods", public_keys(ibkr.Session, true), documented(entries, "^s:([%w_]+)$"), f,
    "s:")
  for _, m in ipairs{ "luv", "cqueues", "state", "kinds", "metrics" } do
    compare("require(\"ibkr." .. m .. "\")", public_keys((require("ibkr." .. m))), -- (one value)
      documented(entries, "^ibkr%." .. m .. "%.([%w_]+)$"), f, "ibkr." .. m .. ".")
  end
  local handle = require("ibkr.cqueues").drive(require("cqueues").new(), coroutine.create(function() end))
  compare("a driver's handle", public_keys(methods_of(handle), true),
    documented(entries, "^handle:([%w_]+)$"), f, "handle:")
  handle:stop()
  local stream_methods = {}
  if ibkr.Session.stream then -- the push channel: its object's methods, once it exists
    local s = ibkr.new{ base_url = "http://127.0.0.1:1/v1/api", retries = 0 }
    local st = s:stream{ topics = {} }
    stream_methods = public_keys(methods_of(st), true)
    st:close()
    s:close()
  end
  compare("a stream's methods", stream_methods, documented(entries, "^st:([%w_]+)$"), f, "st:")
  compare("meta", meta_fields(), documented(entries, "^meta%.([%w_]+)$"), f, "meta.")
  compare("a trace event (lua/ibkr/trace.lua)", trace_fields(), documented(entries, "^ev%.([%w_]+)$"), f,
    "ev.")
  compare("an error object (src/, lua/ibkr/)", error_fields(),
    documented(entries, "^([%l_]+)$", "error field"), f, "err.")
  compare("ibkr-session's commands", args.COMMANDS, documented(entries, "^([%l]+)$", "command"), f)
  compare("ibkr-session's options", args.OPTIONS, documented(entries, "^(%-%-?[%w%-]+)$", "option"), f)
  compare("ibkr-session's exit codes", exit_codes(), documented(entries, "^(%d+)$", "exit code"), f)
  -- every entry is one of the above
  local kinds = { "^ibkr%.", "^s:", "^handle:", "^st:", "^meta%.", "^ev%." }
  for _, e in ipairs(entries) do
    local known = e.table == "command" or e.table == "option" or e.table == "exit code"
      or e.table == "error field"
    for _, p in ipairs(kinds) do known = known or (e.name and e.name:match(p) ~= nil) end
    if not known then
      f[#f + 1] = string.format("%s:%d: `%s` is not a name this spec knows how to check", PAGE, e.line, e.sig)
    end
  end
  return f
end

describe("docs/reference.md", function()
  it("has an entry for everything the library offers, and nothing else", function()
    local failures = check_page(read(PAGE))
    assert(#failures == 0, report(failures))
  end)

  it("says what is tested and what is not recommended", function()
    local text = read(PAGE)
    for _, w in ipairs{ "Lua 5.4", "luv", "cqueues", "C hosts", "LuaJIT", "copas 4", "OpenResty" } do
      assert.truthy(text:find(w, 1, true), w)
    end
    assert.truthy(text:find("not recommended", 1, true))
  end)

  -- The checker itself: each kind of drift is found.
  describe("the checker finds", function()
    local page
    setup(function() page = read(PAGE) end)
    local function finds(text, what)
      local f = table.concat(check_page(text), "\n")
      assert.truthy(f:find(what, 1, true), "not found: " .. what .. "\n" .. f)
    end

    it("a method without an entry, an entry without a method", function()
      finds(page:gsub("\n### `s:tickle%(", "\n### `s:tickel("), "s:tickle exists but has no entry")
      finds(page:gsub("\n### `s:tickle%(", "\n### `s:tickel("), "s:tickel has an entry but does not exist")
    end)

    it("a module export, a field of meta, of a trace event, of an error", function()
      finds(page:gsub("\n### `ibkr%.null`", "\n### `ibkr.nul`"), "ibkr.null exists but has no entry")
      finds(page:gsub("| `meta%.status` |", "| `meta.code` |"), "meta.status exists but has no entry")
      finds(page:gsub("| `ev%.attempt` |", "| `ev.attempts` |"), "ev.attempt exists but has no entry")
      finds(page:gsub("| `curl_code` |", "| `curlcode` |"), "err.curl_code exists but has no entry")
      finds(page:gsub("| `kinds%.retryable%(err%)`", "| `kinds.retriable(err)`"),
        "ibkr.kinds.retryable exists but has no entry")
      finds(page:gsub("### `require%(\"ibkr%.luv\"%)%.drive%(x%)`", "### `require(\"ibkr.luv\").run(x)`"),
        "ibkr.luv.drive exists but has no entry")
    end)

    it("a CLI command, option or exit code", function()
      finds(page:gsub("\n| `logout` |[^\n]*", ""), "logout exists but has no entry")
      finds(page:gsub("| `%-%-no%-init` |", "| `--no-inits` |"), "--no-inits has an entry but does not exist")
      finds(page:gsub("\n| `64` |[^\n]*", ""), "64 exists but has no entry")
      finds(page .. "\n| exit code | |\n|---|---|\n| `5` | x |\n", "5 has an entry but does not exist")
    end)

    it("a pending entry whose name exists now, an entry it cannot check", function()
      finds(page:gsub("\n### `s:close%(%)`", "\n### `s:close()` *pending*"), "s:close exists now")
      finds(page .. "\n### `x:frobnicate()`\n", "`x:frobnicate()` is not a name")
    end)
  end)
end)
