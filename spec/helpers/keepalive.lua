-- Driving a keep-alive coroutine on a fake clock (spec/helpers/clock.lua) in specs: every wait
-- the keep-alive asks for moves the fake clock; only requests in flight take real time (the
-- driver resumes at once until they finish). `start` records what its callbacks saw.
local M = {}

M.STEP = 0.0100001 -- a yield this short means "a request is in flight, resume me soon"

-- Resumes keep-alive `co` until it asks for a wait of at least `min_wait` (one loop turn done,
-- default 1 s), moving fake clock `ft` by every wait longer than a step. Returns that wait, or
-- nil once the keep-alive ended.
function M.turn(co, ft, min_wait)
  min_wait = min_wait or 1
  for _ = 1, 1e6 do
    local ok, wait = coroutine.resume(co)
    assert(ok, wait)
    if coroutine.status(co) == "dead" then return nil end
    assert(type(wait) == "number", "the keep-alive yielded " .. type(wait) .. ", not seconds")
    if wait > M.STEP then
      ft.t = ft.t + wait
      if wait >= min_wait then return wait end
    end
  end
  error("the keep-alive never finished a turn")
end

-- s:keepalive(opts) with recorders for the callbacks the caller did not give: rec.states
-- ({new, old, detail, why}), rec.errors, rec.repairs ({action, res, err}); rec.co the
-- coroutine, rec.names() the states in order, rec.last() the latest one.
function M.start(s, opts)
  local rec = { states = {}, errors = {}, repairs = {} }
  opts = opts or {}
  opts.on_state = opts.on_state or function(new, old, detail, why)
    rec.states[#rec.states + 1] = { new = new, old = old, detail = detail, why = why }
  end
  opts.on_error = opts.on_error or function(err) rec.errors[#rec.errors + 1] = err end
  opts.on_repair = opts.on_repair or function(action, res, err)
    rec.repairs[#rec.repairs + 1] = { action, res, err }
  end
  rec.co = s:keepalive(opts)
  rec.names = function()
    local t = {}
    for i, st in ipairs(rec.states) do t[i] = st.new end
    return t
  end
  rec.last = function() return rec.states[#rec.states] and rec.states[#rec.states].new end
  return rec
end

return M
