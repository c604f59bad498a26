-- ibkr.mock.files: the directories and files of the mock's OAuth test clients (--oauth, --oauth2):
-- a private directory (the one given, or a new temporary one the mock removes when it exits), and
-- new files only their owner may read, never written over an existing file.
local core = require("ibkr.core")

local M = {}

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- The directory `dir` (made, private, when missing), or when dir is nil a new private temporary
-- directory named after `prefix`. Returns the path and whether it is a new temporary one (then
-- remove() it when done); or nil, err.
function M.open_dir(dir, prefix)
  if dir then
    os.execute("umask 077 && mkdir -p " .. shell_quote(dir))
    return dir, false
  end
  local p = io.popen("umask 077 && mktemp -d \"${TMPDIR:-/tmp}/" .. prefix .. ".XXXXXX\"")
  dir = p and p:read("l")
  if p then p:close() end
  if not dir or dir == "" then return nil, "cannot make a temporary directory" end
  return dir, true
end

-- Why dir cannot take the files `names` (one is there already: a file, a directory, a symlink even
-- if it dangles), or nil. Asked before the work of making them; write_new checks again, atomically.
function M.taken(dir, names)
  for _, name in ipairs(names) do
    local path = dir .. "/" .. name
    if os.execute("test -e " .. shell_quote(path) .. " || test -L " .. shell_quote(path)) == true then
      return path .. " exists: the mock never overwrites a file (give it a new or empty directory)"
    end
  end
  return nil
end

function M.remove(dir)
  os.execute("rm -rf " .. shell_quote(dir))
end

-- Writes files = { {name, text}, ... } into dir, each a NEW file of mode 0600 (core.oauth.
-- write_private): an existing file is never overwritten. On a failure the files this call made are
-- removed again. Returns true, or nil, err ("DIR/NAME: exists (never overwritten)").
function M.write_new(dir, files)
  local made = {}
  for _, f in ipairs(files) do
    local path = dir .. "/" .. f[1]
    local ok, err = core.oauth.write_private(path, f[2])
    if not ok then
      for _, p in ipairs(made) do os.remove(p) end
      return nil, err
    end
    made[#made + 1] = path
  end
  return true
end

return M
