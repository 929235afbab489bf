-- Every metering write of meterguard, batched: one call carries many operations, each atomic.
--
-- A gateway process collects the admissions, settlements and flushes of one event-loop tick and
-- sends them here in one EVALSHA (on a cluster: one call per hash slot). Each operation touches
-- the keys of one customer only, under the customer's hash tag. The arithmetic is that of
-- windows.py, billing.py and store/memory.py, which are the reference.
--
-- ARGV[1] is the batch as JSON: {settings, op, op, ...}; settings = {period audit seconds (period
-- counters live that long past the period end), day ttl, max unlisted route labels, "other"
-- label, window ttl slack, idempotency ttl}. KEYS[i] is the hash tag base of op i's customer
-- (`<prefix>:{c:<id>}`): every key the op touches is that base plus a suffix, so all of them
-- are in the slot of the declared key (a cluster routes the call by it). One JSON argument
-- instead of dozens per op: the client encodes it in C, not argument by argument. Codes:
--   A  admit one request (optionally leasing extra units for the fast path, optionally idempotent)
--   S  settle the records of one response
--   F  flush a fast-path process's local usage and give back unused leased units
-- Returns {sec, usec, reply of op 1, reply of op 2, ...}; a failed op's reply is {'err', message}
-- and does not stop the others. Usage of every op lands, aggregated per customer, period and day,
-- as one event in the customer's stream, in the same atomic step as the counters.
-- Floats travel as strings ("%.17g" round-trips a double); Lua numbers become integers in replies.

local batch = cjson.decode(ARGV[1])
local settings = batch[1]
local AUDIT, DAY_TTL, MAX_UNLISTED, OTHER, SLACK, IDEM_TTL =
  settings[1], settings[2], settings[3], settings[4], settings[5], settings[6]

local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000

local function f(x) return string.format('%.17g', x) end
local function int(x) return string.format('%.0f', x) end
local function slot_name(index) return string.format('%.0f', index) end

-- windows.estimate
local function estimate(sliding, previous, current, elapsed, seconds)
  if not sliding then return current end
  return previous * (seconds - elapsed) / seconds + current
end

-- windows.wait
local function wait(sliding, previous, current, elapsed, seconds, limit, w)
  local to_next_slot = seconds - elapsed
  if w > limit then return seconds end
  if not sliding then return to_next_slot end
  if current + w <= limit and previous > 0 then
    local needed_elapsed = seconds - (limit - w - current) * seconds / previous
    return math.max(needed_elapsed - elapsed, 0.001)
  end
  local needed_elapsed = 0.0
  if current > 0 then needed_elapsed = seconds * (1 - (limit - w) / current) end
  return to_next_slot + math.max(needed_elapsed, 0.0)
end

-- windows.reset_after: when a full window next has room for one unit, else its slot end
local function reset_after(sliding, previous, current, elapsed, seconds, limit)
  if estimate(sliding, previous, current, elapsed, seconds) + 1 > limit then
    return wait(sliding, previous, current, elapsed, seconds, limit, 1)
  end
  return seconds - elapsed
end

-- Exact floor((2*a*b + d) / (2*d)) for non-negative integers a, b < 2^52 and d < 2^51: doubles
-- hold integers exactly only up to 2^53, and 26e9 records at $5/1000 already overflow that.
local B = 16777216 -- 2^24
local function limbs(x)
  local out = {}
  for i = 1, 3 do
    local low = x % B
    out[i] = low
    x = (x - low) / B
  end
  return out
end
local function half_up_div(a, b, d)
  local n = 2 * a * b + d
  local den = 2 * d
  if 2 * a * b < 4503599627370496 and d < 4503599627370496 then -- 2^52: every term exact
    local q = math.floor(n / den)
    local r = n - q * den
    if r < 0 then q = q - 1 elseif r >= den then q = q + 1 end
    return q
  end
  local x, y, z = limbs(2 * a), limbs(b), limbs(d)
  local c = {0, 0, 0, 0, 0, 0, 0}
  for i = 1, 3 do
    for j = 1, 3 do c[i + j - 1] = c[i + j - 1] + x[i] * y[j] end
  end
  for i = 1, 3 do c[i] = c[i] + z[i] end
  local carry = 0
  for i = 1, 7 do
    local v = c[i] + carry
    c[i] = v % B
    carry = (v - c[i]) / B
  end
  local q, r = 0, 0
  for i = 7, 1, -1 do
    local limb = c[i]
    for bit = 23, 0, -1 do
      local p = 2 ^ bit
      local b1 = math.floor(limb / p) % 2
      r = 2 * r + b1
      q = 2 * q
      if r >= den then r = r - den; q = q + 1 end
    end
  end
  return q
end

-- billing.meter_cents: graduated tiers {up_to (-1: open-ended), price micros}, each tier's units
-- priced half-up on their own, as one statement line each.
local function meter_cents(used, included, unit, tiers)
  if included < 0 or unit <= 0 then return 0 end
  local over = used - included
  if over <= 0 then return 0 end
  local cents, start = 0, 0
  for _, tier in ipairs(tiers) do
    local up_to, price = tier[1], tier[2]
    local finish = over
    if up_to >= 0 and up_to < over then finish = up_to end
    if finish > start then cents = cents + half_up_div(finish - start, price, unit * 10000) end
    if up_to < 0 or over <= up_to then break end
    start = up_to
  end
  return cents
end

-- memory._route_label: unmatched "METHOD /path" labels are bounded per hash (period or day)
local function label(hash, route, listed)
  if listed or redis.call('HEXISTS', hash, 'u:' .. route) == 1 then return route end
  local n = tonumber(redis.call('HGET', hash, 'un') or '0')
  if n >= MAX_UNLISTED then return OTHER end
  redis.call('HSET', hash, 'u:' .. route, '1')
  redis.call('HINCRBY', hash, 'un', 1)
  return route
end

-- Expiry is set when a counter hash gets its first calls, records or rejection (an increment that
-- returns the amount added): once per hash, not once per request.
local function expire_period(period, period_end)
  -- never an expiry in the past, even for a period id that ended long ago (a replayed record)
  redis.call('EXPIREAT', period, math.max(period_end + AUDIT, sec + DAY_TTL))
end

-- Usage events, aggregated per (stream, period, day) over the whole batch and written at the end.
local events, event_order = {}, {}
local function event(stream, customer, period_id, day)
  local id = stream .. '\n' .. period_id .. '\n' .. day
  local e = events[id]
  if e == nil then
    e = {stream = stream, customer = customer, period = period_id, day = day,
         calls = 0, records = 0, replays = 0, routes = {}, keys = {}, n = 0}
    events[id] = e
    event_order[#event_order + 1] = id
  end
  return e
end
local function add_usage(e, route, key_id, calls, records)
  e.calls = e.calls + calls
  e.records = e.records + records
  local r = e.routes[route] or {0, 0}
  r[1], r[2] = r[1] + calls, r[2] + records
  e.routes[route] = r
  local k = e.keys[key_id] or {0, 0}
  k[1], k[2] = k[1] + calls, k[2] + records
  e.keys[key_id] = k
  e.n = e.n + 1
end

-- Count usage in the period and day hashes, returning the period's route label.
local function count(period, day, period_end, route, listed, key_id, calls, records)
  local route_label
  for i, hash in ipairs({period, day}) do
    local name = label(hash, route, listed)
    local first = false
    if i == 1 then route_label = name end
    if calls ~= 0 then
      first = redis.call('HINCRBY', hash, 'calls', calls) == calls
      redis.call('HINCRBY', hash, 'r:c:' .. name, calls)
      redis.call('HINCRBY', hash, 'k:c:' .. key_id, calls)
    end
    if records ~= 0 then
      first = redis.call('HINCRBY', hash, 'records', records) == records or first
      redis.call('HINCRBY', hash, 'r:r:' .. name, records)
      redis.call('HINCRBY', hash, 'k:r:' .. key_id, records)
    end
    if first then
      if i == 1 then expire_period(hash, period_end) else redis.call('EXPIRE', hash, DAY_TTL) end
    end
  end
  return route_label
end

-- A: {"A", customer, period id, day, weight, sliding (0/1), route, listed (0/1), key id, period
--     end, cap (-1 none), lease wanted, idempotency key ("" none), calls meter, records meter,
--     windows}; a meter is {included (-1 none), unit (0: not billed), {{up_to (-1 open-ended),
--     price micros}, ...}}; a window is {counter (quoted), limit, seconds}.
-- Reply {admitted, reason, {violated window indexes}, calls_violated, records_violated,
--        retry_after, {remaining}, {reset_after}, calls_used, records_used, spend, granted,
--        replay, {slot index per window}}
local function admit(tag, o)
  local customer, period_id, day_id = o[2], o[3], o[4]
  local period, day, used_hash, stream = tag .. ':p:' .. period_id, tag .. ':d:' .. day_id, tag .. ':used', tag .. ':events'
  local weight, sliding = o[5], o[6] == 1
  local route, listed, key_id = o[7], o[8] == 1, o[9]
  local period_end, cap, lease_wanted = o[10], o[11], o[12]
  local idempotent = o[13] ~= ''
  local idem = tag .. ':idem:' .. o[13]
  local calls_included, calls_unit, calls_tiers = o[14][1], o[14][2], o[14][3]
  local records_included, records_unit, records_tiers = o[15][1], o[15][2], o[15][3]
  local windows = o[16]
  local nwindows = #windows

  -- An idempotent retry already billed once is served again unbilled: it still passes (and
  -- fills) the rate windows, which protect the service, but touches no quota or charge.
  local replay = idempotent and redis.call('EXISTS', idem) == 1

  local remaining, resets, violated, slots, state = {}, {}, {}, {}, {}
  local retry_after = 0.0
  local room = math.huge -- units every window could still take after this request
  local window_keys = {}
  for i = 1, nwindows do
    window_keys[i] = tag .. ':w:' .. windows[i][1]
    local limit, seconds = windows[i][2], windows[i][3]
    local index = math.floor(now / seconds)
    local elapsed = now - index * seconds
    local counts = redis.call('HMGET', window_keys[i], slot_name(index - 1), slot_name(index))
    local previous, current = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
    local used = estimate(sliding, previous, current, elapsed, seconds)
    if used + weight > limit then
      violated[#violated + 1] = i
      retry_after = math.max(retry_after, wait(sliding, previous, current, elapsed, seconds, limit, weight))
    else
      room = math.min(room, math.floor(limit - used - weight + 1e-9))
    end
    state[i] = {index, previous, current, elapsed, seconds, limit}
    slots[i] = index
  end

  local totals = redis.call('HMGET', period, 'calls', 'rs', 'records')
  local calls_used = tonumber(totals[1] or '0')
  local reserved = tonumber(totals[2] or '0')
  local records_used = tonumber(totals[3] or '0')
  -- Units leased to fast-path processes count as used until they are flushed or given back.
  local committed = calls_used + reserved
  local spend = meter_cents(committed, calls_included, calls_unit, calls_tiers)
    + meter_cents(records_used, records_included, records_unit, records_tiers)

  local reason = ''
  local calls_violated, records_violated = 0, 0
  if #violated > 0 then
    reason = 'rate_limited'
  elseif not replay then
    if calls_included >= 0 and calls_unit <= 0 and committed + weight > calls_included then calls_violated = 1 end
    if records_included >= 0 and records_unit <= 0 and records_used >= records_included then records_violated = 1 end
    if calls_violated == 1 or records_violated == 1 then
      reason = 'quota'
      retry_after = period_end - now
    elseif cap >= 0 and spend >= cap then
      reason = 'spend_cap'
      retry_after = period_end - now
    end
  end

  -- The lease: extra units reserved in every window and against the calls quota, so that no
  -- process can ever admit past a limit. Near a limit it shrinks to nothing: a process may take
  -- only an eighth of what is left. A plan that bills overage is never leased: units reserved
  -- but not yet used would make the spend-cap check guess, and the cap must start exactly.
  local granted = 0
  local billing = calls_unit > 0 or records_unit > 0 or cap >= 0
  if reason == '' and not replay and lease_wanted > 0 and not billing then
    local left = room
    if calls_included >= 0 then
      left = math.min(left, calls_included - committed - weight)
    end
    if records_included >= 0 and records_unit <= 0 and records_used >= records_included then left = 0 end
    if left ~= math.huge then left = math.floor(left / 8) end
    granted = math.max(0, math.min(lease_wanted, left))
  end

  for i = 1, nwindows do
    local s = state[i]
    local after = s[3]
    if reason == '' then after = after + weight + granted end
    remaining[i] = math.max(0, math.floor(s[6] - estimate(sliding, s[2], after, s[4], s[5]) + 1e-9))
    resets[i] = f(reset_after(sliding, s[2], after, s[4], s[5], s[6]))
  end

  local function reply(admitted)
    return {admitted, reason, violated, calls_violated, records_violated, f(retry_after), remaining, resets,
            int(calls_used), int(records_used), int(spend), granted, replay and 1 or 0, slots}
  end

  if reason ~= '' then
    if redis.call('HINCRBY', period, 'x:' .. reason, 1) == 1 then expire_period(period, period_end) end
    return reply(0)
  end

  for i = 1, nwindows do
    local s = state[i]
    local key = window_keys[i]
    redis.call('HINCRBY', key, slot_name(s[1]), weight + granted)
    if s[3] == 0 then
      -- a new slot: drop the ones the sliding estimate no longer reads, and keep the hash for
      -- as long as this slot can still be read (as the previous one of the next)
      for _, field in ipairs(redis.call('HKEYS', key)) do
        if tonumber(field) < s[1] - 1 then redis.call('HDEL', key, field) end
      end
      redis.call('EXPIRE', key, 2 * s[5] + SLACK)
    end
  end

  local e = event(stream, customer, period_id, day_id)
  if replay then
    if redis.call('HINCRBY', period, 'replays', 1) == 1 then expire_period(period, period_end) end
    if redis.call('HINCRBY', day, 'replays', 1) == 1 then redis.call('EXPIRE', day, DAY_TTL) end
    e.replays = e.replays + 1
    e.n = e.n + 1
  else
    local route_label = count(period, day, period_end, route, listed, key_id, weight, 0)
    add_usage(e, route_label, key_id, weight, 0)
    calls_used = calls_used + weight
    if idempotent then redis.call('SET', idem, '1', 'EX', IDEM_TTL) end
  end
  if granted > 0 then redis.call('HINCRBY', period, 'rs', granted) end
  redis.call('HSET', used_hash, key_id, f(now))
  return reply(1)
end

-- S: {"S", customer, period id, day, records, route, listed (0/1), key id, period end}
local function settle(tag, o)
  local period, day = tag .. ':p:' .. o[3], tag .. ':d:' .. o[4]
  local route_label = count(period, day, o[9], o[6], o[7] == 1, o[8], 0, o[5])
  add_usage(event(tag .. ':events', o[2], o[3], o[4]), route_label, o[8], 0, o[5])
  return 1
end

-- F: {"F", customer, period id, day, period end, consumed (leased units used: reserved ->
--     calls), returned (leased units unused), rows, windows}; a row is {route, listed (0/1),
--     key id, calls, records}; a window is {counter (quoted), slot index, units to give back}.
local function flush(tag, o)
  local period, day, used_hash = tag .. ':p:' .. o[3], tag .. ':d:' .. o[4], tag .. ':used'
  local period_end, consumed, returned = o[5], o[6], o[7]
  local e = event(tag .. ':events', o[2], o[3], o[4])
  for _, row in ipairs(o[8]) do
    local key_id, calls, records = row[3], row[4], row[5]
    local route_label = count(period, day, period_end, row[1], row[2] == 1, key_id, calls, records)
    add_usage(e, route_label, key_id, calls, records)
    if calls > 0 then redis.call('HSET', used_hash, key_id, f(now)) end
  end
  if consumed + returned > 0 then
    local left = redis.call('HINCRBY', period, 'rs', -(consumed + returned))
    if left < 0 then redis.call('HSET', period, 'rs', 0) end
  end
  for _, w in ipairs(o[9]) do
    local key, slot, units = tag .. ':w:' .. w[1], slot_name(w[2]), w[3]
    if units > 0 and redis.call('HEXISTS', key, slot) == 1 then
      local left = redis.call('HINCRBY', key, slot, -units)
      if left < 0 then redis.call('HSET', key, slot, 0) end
    end
  end
  return 1
end

local handlers = {A = admit, S = settle, F = flush}
local out = {time[1], time[2]}
for op = 2, #batch do
  local o = batch[op]
  local ok, result = pcall(handlers[o[1]], KEYS[op - 1], o)
  if ok then out[#out + 1] = result else out[#out + 1] = {'err', tostring(result)} end
end

for _, id in ipairs(event_order) do
  local e = events[id]
  if e.n > 0 then
    redis.call('XADD', e.stream, '*', 'v', '1', 'type', 'usage', 'customer', e.customer, 'period', e.period,
               'day', e.day, 'ts', f(now), 'calls', int(e.calls), 'records', int(e.records),
               'replays', int(e.replays), 'routes', cjson.encode(e.routes), 'keys', cjson.encode(e.keys))
    -- the audit log lives as long as the period counters, from its last write
    redis.call('EXPIRE', e.stream, AUDIT)
  end
end
return out
