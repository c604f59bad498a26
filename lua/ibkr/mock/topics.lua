-- The topics a client sends on the gateway's websocket, and the mock's canned answers, in the
-- shapes of IBKR's websocket documentation (Client Portal "Websockets" pages: sor, str, spl, smd,
-- smh, tic, ech; reference/ibkr-gateway-facts.md section 10). Pure: text in, answers out; the
-- channel itself is ibkr.mock.push. The reference is docs/testing.md ("The websocket").
local json = require("ibkr.mock.json")

local topics = {}

-- Canned values of market-data fields (IBKR's field tags, as strings like the gateway's).
local FIELDS = {
  ["31"] = "172.50", ["55"] = "AAPL", ["70"] = "173.20", ["71"] = "171.80", ["82"] = "1.42",
  ["83"] = "0.83", ["84"] = "172.49", ["85"] = "600", ["86"] = "172.51", ["87"] = "41.2M",
  ["88"] = "1,300", ["7059"] = "100", ["7295"] = "171.90", ["7296"] = "171.08",
}

local function order(ctx)
  return {
    acct = ctx.account, conid = 265598, orderId = 922048212, cashCcy = "USD", sizeAndFills = "0/1",
    orderDesc = "Buy 1 Limit 172.00 GTC", description1 = "AAPL", ticker = "AAPL", secType = "STK",
    listingExchange = "NASDAQ.NMS", remainingQuantity = 1.0, filledQuantity = 0.0,
    companyName = "APPLE INC", status = "Submitted", origOrderType = "LIMIT", supportsTaxOpt = "1",
    lastExecutionTime = os.date("!%y%m%d%H%M%S", ctx.now_ms // 1000), lastExecutionTime_r = ctx.now_ms,
    orderType = "Limit", side = "BUY", timeInForce = "GTC", price = 172, bgColor = "#000000",
    fgColor = "#00F000",
  }
end

local function trade(ctx)
  return {
    execution_id = "0000e0d5.6574f5a1.01.01", symbol = "AAPL", supports_tax_opt = "1", side = "B",
    order_description = "Bot 1 @ 172.00 on ISLAND",
    trade_time = os.date("!%Y%m%d-%H:%M:%S", ctx.now_ms // 1000), trade_time_r = ctx.now_ms, size = 1,
    price = "172.00", order_ref = "mock-1", submitter = ctx.username, exchange = "ISLAND",
    commission = "0.35", net_amount = 172.0, account = ctx.account, accountCode = ctx.account,
    company_name = "APPLE INC", contract_description_1 = "AAPL", sec_type = "STK",
    listing_exchange = "NASDAQ.NMS", conid = "265598", conidex = "265598", clearing_id = "IB",
    clearing_name = "IB", liquidation_trade = "0",
  }
end

local function market_data(conid_ex, args, ctx)
  local conid = math.tointeger(tonumber(conid_ex:match("^%d+")))
  local m = { topic = "smd+" .. conid_ex, conid = conid, conidEx = conid_ex, _updated = ctx.now_ms,
    server_id = "q0", ["6119"] = "q0", ["6509"] = "RpB" }
  local fields = args.fields
  if fields == nil then
    fields = { "31" }
  end
  for _, f in ipairs(fields) do
    local v = FIELDS[tostring(f)]
    if v then
      m[tostring(f)] = v
    end
  end
  return m
end

local function history(conid_ex, server_id, ctx)
  return {
    topic = "smh+" .. conid_ex, serverId = server_id, symbol = "AAPL", text = "APPLE INC",
    priceFactor = 100, startTime = os.date("!%Y%m%d-%H:%M:%S", ctx.now_ms // 1000 - 60),
    high = "17320/412/1", low = "17180/381/0", timePeriod = "60s", barLength = 60,
    mdAvailability = "S", mktDataDelay = 0, outsideRth = false, volumeFactor = 1, priceDisplayRule = 1,
    priceDisplayValue = "2", negativeCapable = false, messageVersion = 2, points = 1,
    data = json.array({ { o = 172.1, c = 172.5, h = 173.2, l = 171.8, v = 412, t = ctx.now_ms - 60000 } }),
  }
end

-- The subscription topics: name -> function(target, args, ctx) -> answer (or nil) and the key the
-- subscription is known by.
local SUBSCRIBE = {
  sor = function(_, _, ctx) return { topic = "sor", args = json.array({ order(ctx) }) }, "sor" end,
  str = function(_, args, ctx)
    if args.realtimeUpdatesOnly == true then
      return nil, "str" -- no history: only new trades (there are none in the mock)
    end
    return { topic = "str", args = json.array({ trade(ctx) }) }, "str"
  end,
  spl = function(_, _, ctx)
    return { topic = "spl", args = { [ctx.account .. ".Core"] = { rowType = 1, dpl = -57.52, nl = 100234.5,
      upl = 972.1, el = 91234.0, mv = 17250.0 } } }, "spl"
  end,
  smd = function(target, args, ctx) return market_data(target, args, ctx), "smd+" .. target end,
  smh = function(target, _, ctx)
    local id = ctx.next_server_id()
    return history(target, id, ctx), "smh+" .. id
  end,
}

-- Unsubscribing: name -> function(target) -> the key it ends.
local UNSUBSCRIBE = {
  uor = function() return "sor" end, utr = function() return "str" end, upl = function() return "spl" end,
  umd = function(target) return "smd+" .. target end, umh = function(target) return "smh+" .. target end,
}

-- Topics naming a contract (or a server id) between "+" signs.
local TARGETED = { smd = true, smh = true, umd = true, umh = true }

local function bad(why)
  return { kind = "bad", answers = { { error = "Bad Request: " .. why } } }
end

-- Splits "NAME+TARGET+{args}" / "NAME+{args}". Returns target, args (a table) or nil, nil, why.
local function split(name, rest)
  local target
  if TARGETED[name] then
    target, rest = rest:match("^%+([^+]+)(.*)$")
    if not target then
      return nil, nil, name .. " needs a contract id"
    end
    if name ~= "umh" and not target:find("^%d+$") and not target:find("^%d+@[%w%.]+$") then
      return nil, nil, "bad contract id " .. target
    end
  end
  if rest == "" then
    return target, {}
  end
  local text = rest:match("^%+(.*)$")
  local ok, args = pcall(json.decode, text or "")
  if not ok or type(args) ~= "table" then
    return nil, nil, "arguments of " .. name .. " must be a JSON object"
  end
  return target, args
end

-- What a client's text message asks. ctx: account, username, session, now_ms (wall clock),
-- last_accessed (ms), next_server_id(). Returns a table: kind ("tic" | "echo" | "subscribe" |
-- "unsubscribe" | "unknown" | "bad"), answers (list of tables to send as JSON or strings to send
-- as they are), and key (the subscription it starts or ends).
function topics.handle(text, ctx)
  if text == "tic" then
    return { kind = "tic", answers = { { topic = "tic", alive = true, id = ctx.session,
      lastAccessed = ctx.last_accessed } } }
  end
  local name, rest = text:sub(1, 3), text:sub(4)
  if name == "ech" and rest:sub(1, 1) == "+" then
    return { kind = "echo", answers = { text } } -- clients see their `ech+hb` come back as it is
  end
  local sub, unsub = SUBSCRIBE[name], UNSUBSCRIBE[name]
  if not sub and not unsub then
    return { kind = "unknown", answers = { { error = "Topic unknown '" .. name .. "'" } } }
  end
  local target, args, why = split(name, rest)
  if args == nil then
    return bad(why)
  end
  if unsub then
    return { kind = "unsubscribe", answers = {}, key = unsub(target) }
  end
  local answer, key = sub(target, args, ctx)
  return { kind = "subscribe", answers = { answer }, key = key }
end

return topics
