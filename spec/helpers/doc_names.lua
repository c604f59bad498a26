-- Reads the project's documents and lists every name they mention in the project's own namespaces,
-- each with its file and line: spec/docs_names_spec.lua then checks that each exists. Reading only
-- (no module of the library is loaded here); what counts as "ours" is decided here:
--
--   span    an inline code span (`...`) outside fenced blocks
--   block   a fenced block; its language (lua, sh, c, "" ...) decides what is read in it
--   prose   the text outside blocks and spans (links, paths, section references, mock endpoints)
--   comment a comment of a file of examples/ (read like a span)
--
-- Mentions (field `kind`, then what it names):
--   ibkr      name = "ibkr.a.b"                 a module, a field of require("ibkr"), or a metatable
--   require   name = "ibkr.a"                   require("ibkr...") of a module
--   core      name = "core.a.b"                 a field of require("ibkr.core")
--   method    recv, name                        recv:name(...) (recv as written: "s", "s._oauth");
--                                               in_block: in a fenced Lua block
--   field     recv, name                        recv.name, for the receivers in DOT_RECEIVERS
--   member    module, name                      alias.name (an alias of a module), or a name in a
--                                               "function" table introduced by a module's name
--   cmdline   prog, explicit, words             a command line (or a synopsis, or a span with an
--                                               option) of ibkr-session ("session"),
--                                               ibkr-mock-gateway ("mock") or either; explicit:
--                                               it names the program. The spec walks its words
--                                               with the parsers (which options take a value)
--   control   method (or nil), path             /__mock/... endpoints of the mock gateway
--   make      name                              a target of the Makefile
--   path      name                              a file or directory of the checkout
--   spec      name                              a spec's name in a span (spec/<name>.lua)
--   env       name                              IBKR_* variables and macros (in the sources)
--   cname     name, cfile (or nil)              a C name of src/ (in cfile when given)
--   link      target, anchor, direction         a markdown link ([text](target#anchor))
--   section   title, target, direction          "Title" named as a section (see "Title" below)
--   facts     number, title                     §N of docs/gateway-facts.md
local M = {}

-- Receivers whose dot-fields are ours (err.kind, s._clock, gw.url, m.port).
M.DOT_RECEIVERS = { s = true, err = true, gw = true, m = true }

-- Words that start a command line that is not one of ours (options after them are not checked).
M.EXTERNAL_COMMANDS = {}
for w in ([[make luarocks lua lua5.4 busted curl openssl cc gcc clang mkdir export kill echo head
    for do done sleep seq valgrind pkg-config apt apt-get eval cd ls rm cp mv cat test [ docker
    systemctl git sh bash nginx exec taskset env timeout ulimit sed grep tar python3 start-bot
    while if then fi]]):gmatch("%S+") do -- (not wait: ibkr-session's, as in `wait --init`)
  M.EXTERNAL_COMMANDS[w] = true
end

local PROGRAMS = {
  ["ibkr-session"] = "session", ["bin/ibkr-session"] = "session",
  ["ibkr-mock-gateway"] = "mock", ["bin/ibkr-mock-gateway"] = "mock",
}

-- Top-level directories of the checkout whose paths are checked; ibkr/x.lua is lua/ibkr/x.lua.
M.PATH_ROOTS = { "src/", "lua/", "spec/", "docs/", "examples/", "bench/", "bin/", "rockspec/",
  ".ci/", "ibkr/" }

---------------------------------------------------------------------------------------------
-- Text positions

local function line_starts(text)
  local starts, pos = { 1 }, 1
  while true do
    local nl = text:find("\n", pos, true)
    if not nl then break end
    starts[#starts + 1] = nl + 1
    pos = nl + 1
  end
  return starts
end

-- The line (1-based) of byte offset pos.
local function line_of(starts, pos)
  local lo, hi = 1, #starts
  while lo < hi do
    local mid = (lo + hi + 1) // 2
    if starts[mid] <= pos then lo = mid else hi = mid - 1 end
  end
  return lo
end

-- text with [from, to] replaced by spaces (newlines kept, so offsets and lines stay)
local function blank(text, from, to)
  return text:sub(1, from - 1) .. text:sub(from, to):gsub("[^\n]", " ") .. text:sub(to + 1)
end

-- URLs blanked: names inside them (api.ibkr.com, /v1/api/...) are not names of ours
local function blank_urls(text)
  return (text:gsub("%a[%w+.-]*://[^%s`'\")>]+", function(u) return (u:gsub(".", " ")) end))
end

---------------------------------------------------------------------------------------------
-- Markdown structure: fenced blocks, headings, spans

-- Splits a markdown text: returns prose (blocks blanked), the list of blocks
-- { lang, line (of the first line inside), text } and the headings { level, text, line }.
local function split_markdown(text)
  local lines, blocks, headings = {}, {}, {}
  local fence, block
  local n = 0
  for line in (text .. (text:sub(-1) == "\n" and "" or "\n")):gmatch("(.-)\n") do
    n = n + 1
    if fence then
      if line:match("^%s*" .. fence .. "+%s*$") then
        fence, block = nil, nil
      else
        block.lines[#block.lines + 1] = line
      end
      lines[n] = ""
    else
      local f, info = line:match("^%s*(```+)%s*(.-)%s*$")
      if not f then f, info = line:match("^%s*(~~~+)%s*(.-)%s*$") end
      if f then
        fence = f:sub(1, 1):rep(3)
        block = { lang = info:match("^(%S*)"), info = info, line = n + 1, lines = {} }
        blocks[#blocks + 1] = block
        lines[n] = ""
      else
        lines[n] = line
        local hashes, title = line:match("^(#+)%s+(.-)%s*#*%s*$")
        if hashes then headings[#headings + 1] = { level = #hashes, text = title, line = n } end
        -- a paragraph's bold lead (**Retry-After holds.**) is a section too, without an anchor
        local lead = (lines[n - 1] or "") == "" and line:match("^%*%*([^*]-)%.?%*%*")
        if lead then headings[#headings + 1] = { level = 0, text = lead, line = n, run_in = true } end
      end
    end
  end
  for _, b in ipairs(blocks) do b.text = table.concat(b.lines, "\n") end
  return table.concat(lines, "\n"), blocks, headings
end

-- Inline code spans of prose: { text, pos (of the text) }; and prose with the spans blanked.
local function spans_of(prose)
  local spans, bare = {}, prose
  local pos = 1
  while true do
    local s, e = prose:find("`+", pos)
    if not s then break end
    local ticks = prose:sub(s, e)
    local cs, ce = prose:find(ticks, e + 1, true)
    -- a closing run of exactly as many backticks, not inside a blank line
    while cs and prose:sub(ce + 1, ce + 1) == "`" do
      cs, ce = prose:find(ticks, ce + 2, true)
    end
    if not cs or prose:sub(e + 1, cs - 1):find("\n%s*\n") then
      pos = e + 1
    else
      local inner = prose:sub(e + 1, cs - 1)
      local lead = #inner:match("^ ?")
      spans[#spans + 1] = { text = inner:sub(lead + 1):gsub(" $", ""), pos = e + 1 + lead }
      bare = blank(bare, s, ce)
      pos = ce + 1
    end
  end
  return spans, bare
end

-- GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
function M.slug(title)
  local s = title:lower():gsub("%[([^%]]*)%]%([^)]*%)", "%1")
  s = s:gsub("[%z\1-\127]", function(c)
    if c:match("[%w_%- ]") then return c end
    return ""
  end)
  -- non-ASCII: keep letters (Latin-1 and beyond), drop punctuation and symbols
  s = s:gsub("[\xC2-\xF4][\x80-\xBF]*", function(ch)
    local cp = utf8.codepoint(ch)
    if (cp >= 0xA0 and cp <= 0xBF) or cp == 0xD7 or cp == 0xF7 or (cp >= 0x2000 and cp <= 0x2BFF)
        or (cp >= 0x3000 and cp <= 0x303F) then
      return ""
    end
    return ch
  end)
  return (s:gsub(" ", "-"))
end

-- Anchors of a file's headings (duplicates get -1, -2 as on GitHub) -> line.
function M.anchors(headings)
  local out, seen = {}, {}
  for _, h in ipairs(headings) do
    if not h.run_in then
      local a = M.slug(h.text)
      if seen[a] then
        seen[a] = seen[a] + 1
        a = a .. "-" .. seen[a]
      else
        seen[a] = 0
      end
      out[a] = h.line
    end
  end
  return out
end

---------------------------------------------------------------------------------------------
-- Names in Lua-ish text (spans, Lua blocks, comments)

-- the character before pos that must not be part of a longer name (api.ibkr.com, x.core.y)
local function boundary_ok(text, pos, forbidden)
  local c = pos > 1 and text:sub(pos - 1, pos - 1) or ""
  return not c:match(forbidden or "[%w_%.%-/@:]")
end

local function trim_name(name)
  return (name:gsub("%.+$", ""))
end

local function add(out, m, starts, pos, base_line)
  m.line = base_line and (base_line + line_of(starts, pos) - 1) or line_of(starts, pos)
  out[#out + 1] = m
end

-- ibkr.x, require("ibkr.x"), core.x, err.x, recv:name(...), recv.field, alias.name
local function lua_names(text, ctx, out, starts, base)
  text = blank_urls(text)
  for pos, name in text:gmatch("()(ibkr%.[%a_][%w_.]*)") do
    if boundary_ok(text, pos) then
      add(out, { kind = "ibkr", name = trim_name(name) }, starts, pos, base)
    end
  end
  for pos, name in text:gmatch("require%s*%(?%s*[\"']()(ibkr[%w_.]*)[\"']") do
    add(out, { kind = "require", name = name }, starts, pos, base)
  end
  for pos, name in text:gmatch("()core%.([%a_][%w_.]*)") do
    local first = name:match("^[^.]+")
    if boundary_ok(text, pos) and not ({ c = true, h = true, so = true, o = true })[first] then
      add(out, { kind = "core", name = "core." .. trim_name(name) }, starts, pos, base)
    end
  end
  for pos, recv, name in text:gmatch("()([%l_][%w_.]*):([%l_][%w_]*)%s*[%({\"']") do
    if boundary_ok(text, pos, "[%w_%.:/]") then
      add(out, { kind = "method", recv = recv, name = name }, starts, pos, base)
    end
  end
  -- a span that is just recv:name (`s:perform`)
  local whole_recv, whole_name = text:match("^([%l_][%w_.]*):([%l_][%w_]*)$")
  if ctx.span and whole_recv then
    add(out, { kind = "method", recv = whole_recv, name = whole_name }, starts, 1, base)
  end
  for pos, recv, name in text:gmatch("()([%a_][%w_]*)%.([%a_][%w_]*)") do
    if M.DOT_RECEIVERS[recv] and boundary_ok(text, pos, "[%w_%.:/%-]") then
      add(out, { kind = "field", recv = recv, name = name }, starts, pos, base)
    end
  end
  for alias, module in pairs(ctx.aliases or {}) do
    for pos, name in text:gmatch("()" .. alias .. "%.([%a_][%w_]*)") do
      if boundary_ok(text, pos, "[%w_%.:/%-]") then
        add(out, { kind = "member", module = module, name = name, alias = alias }, starts, pos, base)
      end
    end
  end
end

-- local x = require("ibkr.y") in a Lua block: x is an alias of ibkr.y there
local function declared_aliases(text, aliases)
  local out = {}
  for k, v in pairs(aliases or {}) do out[k] = v end
  for alias, module in text:gmatch("local%s+([%a_][%w_]*)%s*=%s*require%s*%(?%s*[\"'](ibkr[%w_.]*)[\"']") do
    if alias ~= "ibkr" and alias ~= "core" then out[alias] = module end
  end
  return out
end

---------------------------------------------------------------------------------------------
-- Command lines (ibkr-session, ibkr-mock-gateway)

-- Shell words of one line: quotes removed, $(...) kept as one word, operators as { op = ... }.
local function shell_words(line)
  local words, cur, i = {}, nil, 1
  local function flush()
    if cur then words[#words + 1] = cur; cur = nil end
  end
  while i <= #line do
    local c = line:sub(i, i)
    local two = line:sub(i, i + 1)
    if c:match("%s") then
      flush()
    elseif two == "&&" or two == "||" then
      flush(); words[#words + 1] = { op = two }; i = i + 1
    elseif c == "|" or c == ";" or c == "&" or c == ">" or c == "<" then
      flush(); words[#words + 1] = { op = c }
    elseif c == "#" and not cur then
      break
    elseif c == "'" or c == '"' then
      local j = line:find(c, i + 1, true) or #line + 1
      cur = (cur or "") .. line:sub(i + 1, j - 1)
      i = j
    elseif two == "$(" then
      local depth, j = 0, i + 1
      repeat
        local ch = line:sub(j, j)
        if ch == "(" then depth = depth + 1 elseif ch == ")" then depth = depth - 1 end
        j = j + 1
      until depth == 0 or j > #line
      cur = (cur or "") .. line:sub(i, j - 1)
      i = j - 1
    else
      cur = (cur or "") .. c
    end
    i = i + 1
  end
  flush()
  return words
end

-- Segments (lists of words) of a shell line, split at && || | ; & and without redirections.
local function shell_segments(line)
  local segs, cur, skip = {}, {}, false
  for _, w in ipairs(shell_words(line)) do
    if type(w) == "table" then
      if w.op == ">" or w.op == "<" then
        skip = true
      else
        if #cur > 0 then segs[#segs + 1] = cur end
        cur = {}
      end
    elseif skip then
      skip = false
    else
      cur[#cur + 1] = w
    end
  end
  if #cur > 0 then segs[#segs + 1] = cur end
  return segs
end

-- Whether text is a command line of another program (`openssl s_client ... > gw.pem`).
function M.external_command(text)
  local first = text:gsub("^%$%s+", ""):gsub("^[%u_][%u%d_]*=%S*%s+", ""):match("^(%S+)%s")
  return first ~= nil and (M.EXTERNAL_COMMANDS[first] or (first:find("/", 1, true) and not PROGRAMS[first]))
    and true or false
end

-- Words of a synopsis line or span: brackets, bars and ellipses are punctuation there.
local function synopsis_words(text)
  local words = {}
  text = text:gsub("%s#%s.*$", "")
  for w in text:gsub("[%[%]|]", " "):gsub("%.%.%.", " "):gsub("…", " "):gmatch("%S+") do
    if w:match("^%-[%w%-]*/%-") then
      for part in w:gmatch("[^/]+") do words[#words + 1] = part end
    else
      words[#words + 1] = w
    end
  end
  return words
end

-- the option in a word ("--name", "--name=value" -> "--name"; "--oauth2-*" stays a pattern);
-- single-dash options only on a line that names our program
function M.option_of(word, explicit)
  local o = word:match("^(%-%-[%w][%w%-]*%*?)")
  if not o and explicit then o = word:match("^(%-%a)$") end
  if o and not o:find("*", 1, true) then o = o:gsub("%-+$", "") end
  return o
end

-- One segment of words: which program it is for (named, or the file's default: "session",
-- "mock", "either" when unknown) and its words after the program's name. An external
-- program's segment yields nothing; a segment without an option or a named program neither.
local function command_line(words, default, out, line)
  local i, prog = 1, nil
  if words[1] == "$" then i = 2 end
  while words[i] and words[i]:match("^[%u_][%u%d_]*=") do i = i + 1 end
  local first = words[i]
  if not first then return end
  if PROGRAMS[first] then
    prog, i = PROGRAMS[first], i + 1
  elseif M.EXTERNAL_COMMANDS[first] or first:find("/", 1, true) then
    return
  end
  local rest, has_option = {}, false
  for j = i, #words do
    rest[#rest + 1] = words[j]
    if M.option_of(words[j], prog ~= nil) then has_option = true end
  end
  if prog or has_option then
    out[#out + 1] = { kind = "cmdline", prog = prog or default or "either", explicit = prog ~= nil,
      words = rest, line = line }
  end
end

-- Command lines of a block (sh: shell syntax; anything else: a synopsis) or of a span.
local function cli_names(text, mode, default, out, first_line)
  local n, prog_of_block = 0, nil
  local pending = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    local ln = first_line + n - 1
    if mode == "sh" then
      for _, seg in ipairs(shell_segments(line)) do command_line(seg, default, pending, ln) end
    else
      local alt = line:match("^%s*COMMAND:%s*(.*)$") or line:match("^%s*|%s*(.*)$")
      if alt and (prog_of_block or default) == "session" then
        for a in (alt .. "|"):gmatch("(.-)|") do
          local words = synopsis_words(a)
          if words[1] then
            table.insert(words, 1, "ibkr-session")
            command_line(words, "session", pending, ln)
          end
        end
      else
        local words = synopsis_words(line)
        if words[1] and PROGRAMS[words[1]] then prog_of_block = PROGRAMS[words[1]] end
        command_line(words, prog_of_block or default, pending, ln)
      end
    end
  end
  for _, m in ipairs(pending) do out[#out + 1] = m end
end

---------------------------------------------------------------------------------------------
-- Everywhere: paths, mock endpoints, make targets, IBKR_* names

local function path_names(text, out, starts, base)
  for pos, p in text:gmatch("()([%w_.%-][%w_./%-%*]*)") do
    for _, root in ipairs(M.PATH_ROOTS) do
      if p:sub(1, #root) == root and boundary_ok(text, pos, "[%w_%./~%-%$}:@]") then
        p = p:gsub("[.,:;]+$", "")
        if not p:find("?", 1, true) then
          add(out, { kind = "path", name = p }, starts, pos, base)
        end
        break
      end
    end
  end
end

local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true, HEAD = true,
  ANY = true }

local function control_names(text, out, starts, base)
  for pos, path in text:gmatch("()(/__mock[%w_/%-]*)") do
    path = path:gsub("/+$", "")
    if path ~= "/__mock" and boundary_ok(text, pos, "[%w_]") then
      local before = text:sub(math.max(1, pos - 12), pos - 1):gsub("[%s`*]+$", "")
      local method = before:match("(%u+)$")
      add(out, { kind = "control", path = path, method = METHODS[method] and method or nil },
        starts, pos, base)
    end
  end
end

local function make_names(text, out, starts, base)
  for pos, rest in text:gmatch("()make([^\n`]*)") do
    if boundary_ok(text, pos, "[%w_%-/.]") and not text:sub(1, pos - 1):match("luarocks%s+$")
        and (rest == "" or rest:match("^%s")) then
      for w in rest:gmatch("%S+") do
        if w:match("^[%a][%w_%-]*$") then
          add(out, { kind = "make", name = w }, starts, pos, base)
          break
        elseif not (w:match("^%-") or w:find("=", 1, true)) then
          break
        end
      end
    end
  end
end

local function env_names(text, out, starts, base)
  for pos, name in text:gmatch("()(IBKR_[%u%d_]*[%u%d])") do
    if boundary_ok(text, pos, "[%w_]") then add(out, { kind = "env", name = name }, starts, pos, base) end
  end
end

---------------------------------------------------------------------------------------------
-- Prose only: links, section references, §N of the gateway facts, C names next to their file

local function link_names(bare, out, starts)
  for pos, text, target in bare:gmatch("()%[([^%]\n]*)%]%(([^%s%)]+)%)") do
    if not target:match("^%a[%w+.-]*:") then
      local file, anchor = target:match("^([^#]*)#?(.*)$")
      local dir = text:match("^%s*(above)%s*$") or text:match("^%s*(below)%s*$")
      add(out, { kind = "link", target = file, anchor = anchor ~= "" and anchor or nil,
        direction = dir }, starts, pos)
    end
  end
end

-- "Title" named as a section: see "Title", "Title" below/above, file.md "Title", its "Title"
local function section_names(prose, out, starts)
  for pos, q, title, after in prose:gmatch("()(\"([^\"\n]+)\")([^\n]?[^\n]?[^\n]?[^\n]?[^\n]?[^\n]?)") do
    local before = prose:sub(math.max(1, pos - 40), pos - 1)
    local dir = after:match("^%s*(below)") or after:match("^%s*(above)")
    local file = before:match("([%w_./%-]+%.md)`?%)?%s*$")
    local its = before:match("its%s*$")
    local see = before:match("[Ss]ee%s*$") or before:match("[Ss]ee also%s*$")
    if file or see or dir or its then
      if its then
        local last
        for t in prose:sub(math.max(1, pos - 300), pos - 1):gmatch("%]%(([^%s%)#]+)") do last = t end
        file = last
      end
      add(out, { kind = "section", title = title, target = file, direction = dir, quoted = q },
        starts, pos)
    end
  end
end

local function facts_names(prose, out, starts)
  for pos, num in prose:gmatch("()§%s?(%d[%d.]*)") do
    local before = prose:sub(math.max(1, pos - 12), pos - 1)
    if not before:match("RFC%s*%d+%s*$") then
      local title = prose:sub(pos):match("^§%s?[%d.]+,%s*\"([^\"\n]+)\"")
      add(out, { kind = "facts", number = num:gsub("%.+$", ""), title = title }, starts, pos)
    end
  end
end

-- `name` (src/file.c), `name`, src/file.c, `name` in src/file.c: name must be in that file
local function cname_names(prose, out, starts)
  local near = ("[^`\n]?"):rep(6)
  for pos, name, between, file in prose:gmatch("`()([%a_][%w_]*)`(" .. near .. ")`?(src/[%w_/]+%.[ch])") do
    if between:match("^[%s,(]*$") or between:match("^[%s,(]*in%s+$") then
      add(out, { kind = "cname", name = name, cfile = file }, starts, pos)
    end
  end
end

---------------------------------------------------------------------------------------------
-- "function" tables under a paragraph that names a module: their names are the module's

local function member_tables(text, out)
  local lines = {}
  for l in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  local i = 1
  while i <= #lines do
    local head = lines[i]:match("^|%s*([^|]-)%s*|")
    if head == "function" and (lines[i + 1] or ""):match("^|%s*%-") then
      local j = i - 1
      while j > 0 and lines[j]:match("^%s*$") do j = j - 1 end
      local module
      for span in (lines[j] or ""):gmatch("`([^`]+)`") do
        if span:match("^ibkr[%w_.]*$") then module = span; break end
      end
      i = i + 2
      while lines[i] and lines[i]:match("^|") do
        local cell = lines[i]:match("^|%s*([^|]*)")
        for span in cell:gmatch("`([^`]+)`") do
          local name = span:match("^([%a_][%w_]*)[%(%{%s]") or span:match("^([%a_][%w_]*)$")
          if module and name and not span:match("^[%a_][%w_]*[:.]") then
            out[#out + 1] = { kind = "member", module = module, name = name, line = i }
          end
        end
        i = i + 1
      end
    else
      i = i + 1
    end
  end
end

---------------------------------------------------------------------------------------------
-- Files

local function read(path)
  local f = assert(io.open(path, "r"))
  local t = f:read("a")
  f:close()
  return t
end

-- The mentions of a markdown file, its anchors (-> line) and its headings. opts: aliases (alias ->
-- module, for spans and Lua blocks), cli (the program of command lines that name none: "session",
-- "mock", or nil for either), external (a page about other projects: only its links are read).
function M.markdown(file, text, opts)
  opts = opts or {}
  local out = {}
  local prose, blocks, headings = split_markdown(text)
  local starts = line_starts(prose) -- the same lines as text (blocks emptied)
  local spans, bare = spans_of(prose)
  if opts.external then -- a file about other projects (their paths and names): its links only
    link_names(blank_urls(bare), out, starts)
    for _, m in ipairs(out) do m.file = file end
    return out, M.anchors(headings), headings
  end
  local ctx = { aliases = opts.aliases, span = true }
  for _, sp in ipairs(spans) do
    local base = line_of(starts, sp.pos)
    local sst = line_starts(sp.text)
    if not M.external_command(sp.text) then lua_names(sp.text, ctx, out, sst, base) end
    path_names(sp.text, out, sst, base)
    control_names(sp.text, out, sst, base)
    make_names(sp.text, out, sst, base)
    env_names(sp.text, out, sst, base)
    if sp.text:match("^[%w_]+_spec$") then out[#out + 1] = { kind = "spec", name = sp.text, line = base } end
    local segs = (sp.text:find("&&", 1, true) or sp.text:find("||", 1, true)) and "sh" or "synopsis"
    cli_names(sp.text, segs, opts.cli, out, base)
  end
  for _, b in ipairs(blocks) do
    local bst = line_starts(b.text)
    if b.lang == "lua" or b.lang == "c" then
      local first = #out + 1
      lua_names(b.text, { aliases = b.lang == "lua" and declared_aliases(b.text, opts.aliases) or nil },
        out, bst, b.line)
      for k = first, #out do out[k].in_block = true end
    end
    if b.lang == "c" then
      local code = b.text:gsub("/%*.-%*/", function(c) return (c:gsub("[^\n]", " ")) end)
      for pos, name in code:gmatch("()([%a_][%w_]*)%s*%(") do
        add(out, { kind = "cname", name = name, in_c_block = true }, bst, pos, b.line)
      end
    end
    if b.lang == "sh" or b.lang == "" or b.lang == "console" or b.lang == "text" then
      cli_names(b.text, b.lang == "sh" and "sh" or "synopsis", opts.cli, out, b.line)
      make_names(b.text, out, bst, b.line)
    end
    path_names(b.text, out, bst, b.line)
    control_names(b.text, out, bst, b.line)
    env_names(b.text, out, bst, b.line)
  end
  bare = blank_urls(bare)
  path_names(bare, out, starts)
  control_names(bare, out, starts)
  env_names(bare, out, starts)
  link_names(bare, out, starts)
  section_names(bare, out, starts)
  facts_names(prose, out, starts)
  cname_names(prose, out, starts)
  member_tables(prose, out)
  for _, m in ipairs(out) do m.file = file end
  return out, M.anchors(headings), headings
end

-- Comments of a source file of examples/ (Lua --, C /* */ and //, shell #), read like spans.
function M.comments(file, text)
  local out = {}
  local starts = line_starts(text)
  local found = {}
  if file:match("%.lua$") then
    for pos, c in text:gmatch("()%-%-([^\n]*)") do found[#found + 1] = { pos, c } end
  elseif file:match("%.[ch]$") then
    for pos, c in text:gmatch("()/%*(.-)%*/") do found[#found + 1] = { pos, c } end
    for pos, c in text:gmatch("()//([^\n]*)") do found[#found + 1] = { pos, c } end
  else
    for pos, c in text:gmatch("()#([^\n]*)") do found[#found + 1] = { pos, c } end
  end
  for _, fc in ipairs(found) do
    local base = line_of(starts, fc[1])
    local cst = line_starts(fc[2])
    lua_names(fc[2], {}, out, cst, base)
    path_names(fc[2], out, cst, base)
    control_names(fc[2], out, cst, base)
    make_names(fc[2], out, cst, base)
    env_names(fc[2], out, cst, base)
    local n = 0
    for l in (fc[2] .. "\n"):gmatch("(.-)\n") do
      cli_names(l:gsub("^%s*%**%s*", ""), "sh", nil, out, base + n)
      n = n + 1
    end
  end
  local kept = {}
  for _, m in ipairs(out) do
    m.file = file
    -- in comments only command lines that name our programs count
    if m.kind ~= "cmdline" or m.explicit then kept[#kept + 1] = m end
  end
  return kept
end

M.read = read
return M
