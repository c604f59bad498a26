-- A gzip member with "stored" (uncompressed) deflate blocks: valid gzip that every decoder
-- accepts, made without a compression library. Pure arithmetic (no bit operators) so the file
-- also parses under LuaJIT.
local gzip = {}

local function bxor(a, b)
  local r, bit = 0, 1
  while a > 0 or b > 0 do
    local x, y = a % 2, b % 2
    if x ~= y then
      r = r + bit
    end
    a, b, bit = (a - x) / 2, (b - y) / 2, bit * 2
  end
  return r
end

local crc_table
local function make_table()
  crc_table = {}
  for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
      if c % 2 == 1 then
        c = bxor(0xEDB88320, (c - 1) / 2)
      else
        c = c / 2
      end
    end
    crc_table[i] = c
  end
end

function gzip.crc32(s)
  if not crc_table then
    make_table()
  end
  local crc = 0xFFFFFFFF
  for i = 1, #s do
    local idx = bxor(crc % 256, s:byte(i))
    crc = bxor(crc_table[idx], math.floor(crc / 256))
  end
  return bxor(crc, 0xFFFFFFFF)
end

local function le(n, bytes)
  local out = {}
  n = math.floor(n)
  for i = 1, bytes do
    out[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end

function gzip.compress(data)
  local out = { "\31\139\8\0\0\0\0\0\0\255" }
  local n, i = #data, 1
  repeat
    local len = math.min(65535, n - i + 1)
    local final = (i + len > n) and 1 or 0
    out[#out + 1] = string.char(final) .. le(len, 2) .. le(65535 - len, 2) .. data:sub(i, i + len - 1)
    i = i + len
  until i > n
  out[#out + 1] = le(gzip.crc32(data), 4) .. le(n % 4294967296, 4)
  return table.concat(out)
end

return gzip
