-- One atomic admission decision; the same arithmetic as windows.py, billing.py and memory.py.
--
-- KEYS[1] period hash    KEYS[2] day hash    KEYS[3] customer's key index (key_id -> hash)
-- KEYS[4] last-used hash KEYS[5..] one hash per rate window (field: slot index -> units)
-- ARGV: weight, sliding (1/0), route, listed (1/0), key_id, period end (epoch s),
--       period audit seconds (counters live that long past the period end), day ttl,
--       max unlisted labels, "other" label, window ttl slack,
--       calls included (-1: none), calls unit, calls price micros,
--       records included (-1: none), records unit, records price micros,
--       spend cap cents (-1: none), then limit, seconds per window.
-- Returns {admitted, reason, {violated window indexes}, calls_violated, records_violated,
--          retry_after, {remaining}, {reset_after}, calls_used, records_used, spend, sec, usec}.
-- Floats travel as strings ("%.17g" round-trips a double); Lua numbers become integers in replies.

local weight = tonumber(ARGV[1])
local sliding = ARGV[2] == '1'
local route, listed, key_id = ARGV[3], ARGV[4] == '1', ARGV[5]
local period_end, period_audit, day_ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local max_unlisted, other, slack = tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
local calls_included, calls_unit, calls_price = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local records_included, records_unit, records_price = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local cap = tonumber(ARGV[18])
local first_window_arg = 19

local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000

local function f(x) return string.format('%.17g', x) end
local function slot_name(index) return string.format('%.0f', index) end

-- windows.estimate
local function estimate(previous, current, elapsed, seconds)
  if not sliding then return current end
  return previous * (seconds - elapsed) / seconds + current
end

-- windows.wait
local function wait(previous, current, elapsed, seconds, limit, w)
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
local function reset_after(previous, current, elapsed, seconds, limit)
  if estimate(previous, current, elapsed, seconds) + 1 > limit then
    return wait(previous, current, elapsed, seconds, limit, 1)
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

-- billing.line_cents / billing.over
local function line_cents(used, included, unit, price)
  if included < 0 or unit <= 0 then return 0 end
  local over = used - included
  if over <= 0 then return 0 end
  return half_up_div(over, price, unit * 10000)
end

-- memory._route_label: unmatched "METHOD /path" labels are bounded per hash (period or day)
local function label(hash)
  if listed or redis.call('HEXISTS', hash, 'u:' .. route) == 1 then return route end
  local n = tonumber(redis.call('HGET', hash, 'un') or '0')
  if n >= max_unlisted then return other end
  redis.call('HSET', hash, 'u:' .. route, '1')
  redis.call('HINCRBY', hash, 'un', 1)
  return route
end

local nwindows = #KEYS - 4
local remaining, resets, violated, slots = {}, {}, {}, {}
local retry_after = 0.0
for i = 1, nwindows do
  local limit = tonumber(ARGV[first_window_arg + 2 * (i - 1)])
  local seconds = tonumber(ARGV[first_window_arg + 2 * (i - 1) + 1])
  local index = math.floor(now / seconds)
  local elapsed = now - index * seconds
  local counts = redis.call('HMGET', KEYS[4 + i], slot_name(index - 1), slot_name(index))
  local previous, current = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
  local used = estimate(previous, current, elapsed, seconds)
  local after = current + weight
  if used + weight > limit then
    violated[#violated + 1] = i
    retry_after = math.max(retry_after, wait(previous, current, elapsed, seconds, limit, weight))
    after = current -- refused: nothing is added
  end
  remaining[i] = math.max(0, math.floor(limit - estimate(previous, after, elapsed, seconds) + 1e-9))
  resets[i] = f(reset_after(previous, after, elapsed, seconds, limit))
  slots[i] = {index, current, seconds}
end

local period = KEYS[1]
local calls_used = tonumber(redis.call('HGET', period, 'calls') or '0')
local records_used = tonumber(redis.call('HGET', period, 'records') or '0')
local spend = line_cents(calls_used, calls_included, calls_unit, calls_price)
  + line_cents(records_used, records_included, records_unit, records_price)

local reason = ''
local calls_violated, records_violated = 0, 0
if #violated > 0 then
  reason = 'rate_limited'
else
  if calls_included >= 0 and calls_unit <= 0 and calls_used + weight > calls_included then calls_violated = 1 end
  if records_included >= 0 and records_unit <= 0 and records_used >= records_included then records_violated = 1 end
  if calls_violated == 1 or records_violated == 1 then
    reason = 'quota'
    retry_after = period_end - now
  elseif cap >= 0 and spend >= cap then
    reason = 'spend_cap'
    retry_after = period_end - now
  end
end

local function reply(admitted)
  return {admitted, reason, violated, calls_violated, records_violated, f(retry_after), remaining, resets,
          string.format('%.0f', calls_used), string.format('%.0f', records_used), string.format('%.0f', spend),
          time[1], time[2]}
end

-- never an expiry in the past, even for a period id that ended long ago (a replayed record)
local period_ttl_at = math.max(period_end + period_audit, sec + day_ttl)

if reason ~= '' then
  redis.call('HINCRBY', period, 'x:' .. reason, 1)
  redis.call('EXPIREAT', period, period_ttl_at)
  return reply(0)
end

for i = 1, nwindows do
  local index, current, seconds = slots[i][1], slots[i][2], slots[i][3]
  local key = KEYS[4 + i]
  redis.call('HINCRBY', key, slot_name(index), weight)
  if current == 0 then
    -- a new slot: drop the ones the sliding estimate no longer reads
    for _, field in ipairs(redis.call('HKEYS', key)) do
      if tonumber(field) < index - 1 then redis.call('HDEL', key, field) end
    end
  end
  redis.call('EXPIRE', key, 2 * seconds + slack)
end

local day = KEYS[2]
for _, hash in ipairs({period, day}) do
  redis.call('HINCRBY', hash, 'calls', weight)
  redis.call('HINCRBY', hash, 'r:c:' .. label(hash), weight)
  redis.call('HINCRBY', hash, 'k:c:' .. key_id, weight)
end
redis.call('EXPIREAT', period, period_ttl_at)
redis.call('EXPIRE', day, day_ttl)
calls_used = calls_used + weight

if redis.call('HEXISTS', KEYS[3], key_id) == 1 then
  redis.call('HSET', KEYS[4], key_id, f(now))
end
return reply(1)
