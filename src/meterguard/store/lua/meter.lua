-- meterguard ledger v2: every metering write of a gateway process, batched, retried by id.
--
-- One call carries the work of one event-loop tick of one writer (a gateway process) for one
-- hash slot, grouped per customer. Every key a group touches is declared in KEYS and shares the
-- customer's hash tag, so a cluster routes the call by them and, while a slot migrates, runs it
-- on the source only when every key is still there (else ASK or TRYAGAIN, and nothing runs).
--
-- Ids. A batch carries its writer id and sequence number. Each customer's state hash keeps, per
-- writer, the last sequence applied and what its admissions decided (`l:<writer>`), so:
--   * a repeat of the last batch (a retry after a timeout, a reset, MOVED, ASK, TRYAGAIN or a
--     failover) applies nothing and answers "dup" with the recorded decisions;
--   * an older batch arriving late (stuck in a socket while the writer moved on) applies
--     nothing ("stale").
-- A writer has at most one batch in flight per slot, so sequence numbers per customer only grow.
--
-- Deadline. A batch with admissions carries a deadline in the server's clock (ms). Run after
-- it, its admissions are void (reply code EXPIRED): the writer has stopped waiting and answered.
-- Usage rows (settlements, flushes) apply whenever the batch runs: they must never be lost.
--
-- Carries. When a writer gives up on a batch (no reply before its deadline) it cannot know
-- whether it ran. Every later batch carries it, per customer, until one is acknowledged:
--   * carried seq == recorded seq: it ran. Admissions the writer answered 503 are undone
--     (undo by id); those it served anyway (fail_open) are kept; leased units go back.
--   * carried seq >  recorded seq: it never ran and now never will (the record moves past it):
--     its usage rows apply now, and admissions served anyway are counted as usage.
--   * carried seq <  recorded seq: resolved by an earlier batch that carried it.
--
-- Layout under the customer's tag T (`<prefix>:{c:<id>}`):
--   T:s          hash  <window> = a rate window's counts, packed: its last slot written, the count
--                      of the slot before it and its own (three doubles, struct.pack '<ddd');
--                      u:<key id> = last use; l:<writer> = ledger record (ln: how many);
--                      P = the period ids with counters
--   T:p:<period> hash  calls, records, rs (units leased, not yet flushed), replays, unmetered, uncounted,
--                      x:<reason> (refusals), un + u:<label> (unmatched route labels seen), _,
--                      c<US><day><US><route><US><key> / r<US>... (calls / records per day, route
--                      and key: the audit cells; totals by route, key and day are their sums)
--   T:events     stream usage events, one per customer, period and day in a batch (v 3)
--   T:i:<digest> hash  an Idempotency-Key: fp (request fingerprint), st = run | done
--
-- Cost. Inside Redis a script's time goes to Lua (every new string or table, every number
-- turned into text) and to each redis.call more than to the commands themselves. So: one HMGET
-- and one HSET per hash and group, numbers handed to redis.call as numbers (Redis prints them
-- in C), window fields named once per batch, replies returned as Lua arrays (turned into RESP
-- in C), events written as one field. Past those, most of the time went to building Lua tables
-- one key at a time (every new key, every resize of a growing table): so the hashes' views are
-- reused from group to group, replies are built in one go, and an event's rows are one string each.
--
-- ARGV[1] = MessagePack or JSON {s = settings, w = writer, q = seq, d = deadline ms (0: none), t = terms, g = groups}
--   settings = {period audit seconds, max unmatched labels, "other" label, idempotency lock
--               seconds, events max length (0: none), state ttl seconds}
--   terms    = {sliding (0/1), {{window field, limit, seconds}, ...}, calls meter, records
--               meter}; meter = {included (-1: none), unit (0: not billed), {{up_to (-1:
--               open-ended), price micros}, ...}}
--   group    = {customer, KEYS index of T:s, KEYS index of T:events, admissions, usages, carries}
--   admission= {terms, KEYS index of T:p, period id, day, weight, route, listed (0/1), key id,
--               period end, cap (-1: none), lease wanted, KEYS index of T:i (0: none),
--               fingerprint, served on loss (0/1), alert thresholds (0: none), priced (0/1)}
--   usage    = {KEYS index of T:p, period id, day, period end, rows, consumed, returned, windows,
--               unmetered, uncounted, alert thresholds, priced, acks}; row = {route, listed (0/1),
--               key id, calls, records}; window = {window field, seconds, slot index, units back}
--   carry    = {seq, admissions, usages} exactly as sent in that batch
--   Trailing fields at their default (cap -1, lease 0, "", an empty list, else 0) are left out,
--   of groups too: decoding costs Redis about 1 us per value, and most are defaults.
-- Returns {sec, usec, group reply, ...}; a group reply is {"ok", {admission reply, ...}, alerts
-- fired and not yet acknowledged ({period id, "name=level,...", ...}, when there are)}, where
-- an admission reply is {code, calls used, records used, spend cents, granted, flags, previous
-- 1, count 1, ...}; or {"dup", sec, usec, {{code, granted, flags}, ...}} with the recorded
-- decisions and the time of the run that applied them; or {"stale"}.

local CODE_ADMITTED, CODE_RATE, CODE_QUOTA, CODE_CAP = 0, 1, 2, 3
local CODE_IN_FLIGHT, CODE_MISMATCH, CODE_EXPIRED = 4, 5, 8
local FLAG_REPLAY, FLAG_IDEM_SET, FLAG_CALLS, FLAG_RECORDS, FLAG_WINDOW = 1, 2, 4, 8, 16
local REASONS = {[CODE_RATE] = 'rate_limited', [CODE_QUOTA] = 'quota', [CODE_CAP] = 'spend_cap'}
local US = '\31'
local NONE = {} -- a list left out of the argument: empty
local MAX_WRITERS = 64

-- MessagePack (a map: its first byte is never '{'), or JSON when the gateway could not pack it
-- (a string no UTF-8 can carry, an integer past 64 bits): cmsgpack reads integers and strings
-- without parsing text, about a fifth of the decoding's cost.
local batch
if string.byte(ARGV[1], 1) == 123 then batch = cjson.decode(ARGV[1]) else batch = cmsgpack.unpack(ARGV[1]) end
local settings = batch.s
local AUDIT, MAX_UNLISTED, OTHER, IDEM_LOCK, EVENTS_MAX, STATE_TTL =
  settings[1], settings[2], settings[3], settings[4], settings[5], settings[6]
local writer, seq, deadline, terms = batch.w, batch.q, batch.d, batch.t
local EVENTS_MAX_TEXT = string.format('%d', EVENTS_MAX) -- once, not a %.17g in Redis per XADD

local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
local expired = deadline > 0 and sec * 1000 + math.floor(usec / 1000) > deadline
local ts = time[1] .. '.' .. string.format('%06d', usec)
local record_field = 'l:' .. writer
local TODAY = string.format('%d', math.floor(sec / 86400)) -- the day number, as the state hash keeps it
local seq_text = tostring(seq)

-- Numbers as text, each converted once per call (Lua's conversion is a sprintf: dear in Redis).
local texts = {}
local function text(n)
  local s = texts[n]
  if s == nil then
    s = tostring(n) -- %.14g: exact below 10^14, which every count here is
    texts[n] = s
  end
  return s
end

-- Each window's slot now, once per batch, and its counts as the group being run reads them:
-- `previous` and `current` (the previous and the current slot's), `group` (the last group that
-- read them), `changed` (to be written back).
local slots = {} -- window field .. '/' .. seconds -> the window's slot
local function slot_of(field, seconds)
  local id = field .. '/' .. seconds
  local s = slots[id]
  if s == nil then
    local index = math.floor(now / seconds)
    s = {index = index, elapsed = now - index * seconds, field = field, previous = 0, current = 0, group = 0,
         changed = false}
    slots[id] = s
  end
  return s
end
for _, t in ipairs(terms) do
  for _, w in ipairs(t[2]) do w[4] = slot_of(w[1], w[3]) end
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

-- billing.meter_cents: graduated tiers, each tier's units priced half-up on their own.
local function meter_cents(used, meter)
  local included, unit, tiers = meter[1], meter[2], meter[3]
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

-- A hash as a group sees it: the fields it needs, read with one HMGET; the ones it changed,
-- written with one HSET. Values are read as text and become numbers when first used as such.
-- Views are reused from group to group (reset empties them): tables grown one field at a time
-- cost Redis more than anything else in this script (each new key, each resize).
local function new_view()
  return {key = false, names = {}, count = 0, vals = {}, dirty = {}, order = {}, n = 0}
end
local function reset(v, key)
  local vals, dirty, names, order = v.vals, v.dirty, v.names, v.order
  for i = 1, v.count do vals[names[i]] = nil end
  for i = 1, v.n do
    local field = order[i]
    vals[field] = nil
    dirty[field] = nil
  end
  v.key, v.count, v.n = key, 0, 0
  return v
end
local function want(v, field) -- a field asked twice is read twice: cheaper than remembering
  local count = v.count + 1
  v.count = count
  v.names[count] = field
end
local function load(v)
  local names, count = v.names, v.count
  if count == 0 then return end
  local got = redis.call('HMGET', v.key, unpack(names, 1, count))
  local vals = v.vals
  for i = 1, count do vals[names[i]] = got[i] end
end
local function get(v, field)
  local value = v.vals[field]
  if type(value) ~= 'number' then
    if value == nil then error('meter.lua: ' .. field .. ' used but never read') end
    value = tonumber(value) or 0
    v.vals[field] = value
  end
  return value
end
local function put(v, field, value)
  v.vals[field] = value
  local dirty = v.dirty
  if not dirty[field] then
    dirty[field] = true
    local n = v.n + 1
    v.n = n
    v.order[n] = field
  end
end
-- Only a field the group read (wanted) can be added to: one not read would read 0, and the
-- batch's amount would replace the total.
local function add(v, field, amount) -- get and put, written out: the commonest write
  if amount == 0 then return end
  local vals = v.vals
  local value = vals[field]
  if value == nil then error('meter.lua: ' .. field .. ' added to but never read') end
  if type(value) ~= 'number' then value = tonumber(value) or 0 end
  vals[field] = value + amount
  local dirty = v.dirty
  if not dirty[field] then
    dirty[field] = true
    local n = v.n + 1
    v.n = n
    v.order[n] = field
  end
end

local hset_args = {} -- reused: HSET's arguments, the first 2n of them
local function store(v)
  local n = v.n
  if n == 0 then return end
  local args, order, vals = hset_args, v.order, v.vals
  for i = 1, n do
    local field = order[i]
    args[2 * i - 1] = field
    args[2 * i] = vals[field] -- a number is printed by Redis (%.17g), in C: integers exactly
  end
  redis.call('HSET', v.key, unpack(args, 1, 2 * n))
end

local state_view = new_view()
local period_views, periods_used = {}, 0 -- the period views, used by this group: the first periods_used

-- The group being run: its hashes, the events it writes, and what the record keeps of each
-- admission (code, granted, flags). Module-level so that the functions below are made once per
-- call, not once per group.
local state, periods, events, event_order, recorded_now

local group_number = 0 -- of the group being run, in this call
local windows_wanted = {} -- terms index -> the last group that asked for their window fields
local windows_read, windows_count = {}, 0 -- the windows this group reads: the first windows_count

-- A window's counts are one field of the state hash, named after the window: its slot index and
-- the previous and current slot's counts, packed (three doubles, exact for integers). One field
-- read and written instead of a field per slot and one naming the last slot written, which
-- also left the slots before the previous one to delete: 5% of this script's instructions.
local PACKED, PACKED_SIZE = '<ddd', 24 -- little-endian whatever the server's CPU

local function want_window(s)
  if s.group == group_number then return end
  s.group, s.changed = group_number, false
  windows_count = windows_count + 1
  windows_read[windows_count] = s
  want(state, s.field)
end

local function want_windows(t)
  -- a customer's requests in one batch nearly always share their terms: their fields once
  if windows_wanted[t] == group_number then return end
  windows_wanted[t] = group_number
  for _, w in ipairs(terms[t][2]) do want_window(w[4]) end
end

local function want_returns(u)
  for _, w in ipairs(u[8] or NONE) do want_window(slot_of(w[1], w[2])) end
end

-- The layout before the packed field: a field per slot ("<window>@<slot index>") and the window's
-- own field naming the last slot written. Read once, then deleted: the packed field replaces them.
local function unpacked_counts(s, last)
  s.changed = true -- whatever the field held, the packed counts replace it
  if last == nil then return -1, 0, 0 end -- not a slot index: nothing to read
  local last_field, before_field = s.field .. '@' .. text(last), s.field .. '@' .. text(last - 1)
  local got = redis.call('HMGET', state.key, last_field, before_field)
  redis.call('HDEL', state.key, last_field, before_field)
  return last, tonumber(got[2]) or 0, tonumber(got[1]) or 0
end

-- Each window's counts now: a slot further back than the previous one counts nothing.
local function read_windows()
  local vals = state.vals
  for i = 1, windows_count do
    local s = windows_read[i]
    local value = vals[s.field]
    local previous, current = 0, 0
    if value then
      local index, before, last
      if #value == PACKED_SIZE then
        index, before, last = struct.unpack(PACKED, value)
      else
        index, before, last = unpacked_counts(s, tonumber(value))
      end
      if index == s.index then
        previous, current = before, last
      elseif index == s.index - 1 then
        previous = last
      end
    end
    s.previous, s.current = previous, current
  end
end

local function write_windows()
  for i = 1, windows_count do
    local s = windows_read[i]
    if s.changed then put(state, s.field, struct.pack(PACKED, s.index, s.previous, s.current)) end
  end
end

local function decisions(record, from) -- the record's "sec|usec|code,granted,flags;..." from `from` on
  local at_sec, at_usec, rest = string.match(record, '^(%d+)|(%d+)|(.*)$', from)
  local list = {}
  for code, granted, flags in string.gmatch(rest, '(%d+),(%d+),(%d+)') do
    list[#list + 1] = {tonumber(code), tonumber(granted), tonumber(flags)}
  end
  return at_sec, at_usec, list
end

local function period(index, period_end, period_id)
  local p = periods[index]
  if p == nil then
    periods_used = periods_used + 1
    p = period_views[periods_used]
    if p == nil then
      p = new_view()
      period_views[periods_used] = p
    end
    reset(p, KEYS[index])
    -- what a period's view keeps besides its fields: its id, the latest period end its entries
    -- name, and which optional fields it asked for (rs, alerts) or wrote outside HSET (refusals)
    p.id, p.period_end, p.reserved, p.alerts, p.touched = period_id, 0, false, false, false
    want(p, '_')
    want(p, 'calls')
    want(p, 'records')
    -- rs (leased units): by admissions and the usage that returns or prices leased units;
    -- replays, unmetered, uncounted: only by the groups that add to them (rare)
    periods[index] = p
  end
  if period_end > p.period_end then p.period_end = period_end end
  return p
end

-- Returns the route's call and record cells (nil where not counted), kept for `count`: each
-- name is made once per batch.
local function want_cells(p, day, route, listed, key_id, calls, records)
  if listed ~= 1 then
    want(p, 'un')
    want(p, 'u:' .. route)
    if calls ~= 0 then want(p, 'c' .. US .. day .. US .. OTHER .. US .. key_id) end
    if records ~= 0 then want(p, 'r' .. US .. day .. US .. OTHER .. US .. key_id) end
  end
  local calls_cell, records_cell
  if calls ~= 0 then
    calls_cell = 'c' .. US .. day .. US .. route .. US .. key_id
    want(p, calls_cell)
  end
  if records ~= 0 then
    records_cell = 'r' .. US .. day .. US .. route .. US .. key_id
    want(p, records_cell)
  end
  return calls_cell, records_cell
end

-- Alerts: how many thresholds of each meter fired this period (A:c, A:r, A:s) and those fired
-- but not yet acknowledged by a gateway that delivered them (A: "name=level,...").
local function want_alerts(p)
  if not p.alerts then
    p.alerts = true
    want(p, 'A')
    want(p, 'A:c')
    want(p, 'A:r')
    want(p, 'A:s')
  end
end

local function want_reserved(p)
  if not p.reserved then
    p.reserved = true
    want(p, 'rs')
  end
end

local function want_admission(a)
  local p = period(a[2], a[9], a[3])
  want_reserved(p)
  a.cell = want_cells(p, a[4], a[6], a[7], a[8], a[5], 0)
  if (a[12] or 0) > 0 then want(p, 'replays') end -- only a request with an Idempotency-Key replays
  if a[15] and a[15] ~= 0 then want_alerts(p) end
end

local function want_usage(u)
  local p = period(u[1], u[4], u[2])
  for _, row in ipairs(u[5]) do row[6], row[7] = want_cells(p, u[3], row[1], row[2], row[3], row[4], row[5]) end
  if (u[9] or 0) > 0 then want(p, 'unmetered') end
  if (u[10] or 0) > 0 then want(p, 'uncounted') end
  if (u[6] or 0) + (u[7] or 0) > 0 or (u[11] and u[11] ~= 0 and u[12] and u[12] ~= 0) then want_reserved(p) end
  if (u[11] and u[11] ~= 0) or (u[13] and u[13] ~= 0) then want_alerts(p) end
end

-- Each threshold of a meter fires once per period, in order of level, when the meter's level
-- reaches it: checked whenever usage changes and on every refusal, in the step that changes
-- usage, so no burst can run past one unseen. `levels` = {calls, records, spend or nil}.
local METERS = {'A:c', 'A:r', 'A:s'}
local function check_alerts(p, thresholds, levels)
  local seen, fired = {0, 0, 0}, {}
  for _, threshold in ipairs(thresholds) do
    local meter = threshold[1]
    local k = seen[meter] + 1
    seen[meter] = k
    local done = fired[meter]
    if done == nil then
      done = get(p, METERS[meter])
      fired[meter] = done
    end
    local level = levels[meter]
    if k > done and level ~= nil and level >= threshold[2] then
      fired[meter] = k
      put(p, METERS[meter], k)
      local entry = threshold[3] .. '=' .. text(level)
      local pending = p.vals['A'] -- a field HMGET did not find reads false
      if not pending or pending == '' then pending = entry else pending = pending .. ',' .. entry end
      put(p, 'A', pending)
    end
  end
end

-- Forget the alerts a gateway delivered (it acknowledges them by name).
local function ack_alerts(p, names)
  local pending = p.vals['A']
  if not pending or pending == '' then return end
  local done = {}
  for _, name in ipairs(names) do done[name] = true end
  local kept = {}
  for entry in string.gmatch(pending, '[^,]+') do
    if not done[string.match(entry, '^(.*)=')] then kept[#kept + 1] = entry end
  end
  put(p, 'A', table.concat(kept, ','))
end

-- Take units back out of the slot they were counted in, if the window still reads it.
local function window_give_back(field, seconds, slot, units)
  local s = slot_of(field, seconds)
  if units == 0 or s.group ~= group_number then return end -- (every caller's windows were read)
  if slot == s.index and s.current > 0 then
    s.current, s.changed = math.max(0, s.current - units), true
  elseif slot == s.index - 1 and s.previous > 0 then
    s.previous, s.changed = math.max(0, s.previous - units), true
  end
end

-- An event per (period, day) of the group; nearly always one, so the first is kept at hand.
local function event(period_id, day)
  local e = event_order[1]
  if e ~= nil and e.period == period_id and e.day == day then return e end
  local id = period_id .. '\n' .. day
  e = events[id]
  if e == nil then
    e = {period = period_id, day = day, calls = 0, records = 0, replays = 0, unmetered = 0, uncounted = 0,
         rows = {}}
    events[id] = e
    event_order[#event_order + 1] = e
  end
  return e
end

-- _memory_tallies.route_label: unmatched "METHOD /path" labels are bounded per period.
local function label(p, route, listed)
  if listed == 1 or p.vals['u:' .. route] then return route end
  if get(p, 'un') >= MAX_UNLISTED then return OTHER end
  put(p, 'u:' .. route, 1)
  add(p, 'un', 1)
  return route
end

-- Count calls and records in the period totals, the audit cells and the event. `calls_cell`
-- and `records_cell`: the route's cells as want_cells named them.
local function count(p, period_id, day, route, listed, key_id, calls, records, calls_cell, records_cell)
  local name = route
  if listed ~= 1 then name = label(p, route, listed) end
  if name ~= route then -- past the bound of unmatched labels: counted as OTHER
    calls_cell = 'c' .. US .. day .. US .. name .. US .. key_id
    records_cell = 'r' .. US .. day .. US .. name .. US .. key_id
  end
  local e = event(period_id, day)
  if calls ~= 0 then
    add(p, 'calls', calls)
    add(p, calls_cell, calls)
    e.calls = e.calls + calls
  end
  if records ~= 0 then
    add(p, 'records', records)
    add(p, records_cell, records)
    e.records = e.records + records
  end
  -- one line per count; an export adds up lines of the same route and key
  local rows = e.rows
  rows[#rows + 1] = '\n' .. name .. '\t' .. key_id .. '\t' .. text(calls) .. '\t' .. text(records)
end

local function apply_usage(u)
  local p = period(u[1], u[4], u[2])
  local period_id, day = u[2], u[3]
  for _, row in ipairs(u[5]) do
    count(p, period_id, day, row[1], row[2], row[3], row[4], row[5], row[6], row[7])
    if row[4] > 0 then put(state, 'u:' .. row[3], time[1]) end
  end
  local consumed, returned = u[6] or 0, u[7] or 0
  if consumed + returned > 0 then put(p, 'rs', math.max(0, get(p, 'rs') - consumed - returned)) end
  for _, w in ipairs(u[8] or NONE) do window_give_back(w[1], w[2], w[3], w[4]) end
  local unmetered = u[9] or 0
  if unmetered > 0 then
    add(p, 'unmetered', unmetered)
    local e = event(period_id, day)
    e.unmetered = e.unmetered + unmetered
  end
  local uncounted = u[10] or 0
  if uncounted > 0 then
    add(p, 'uncounted', uncounted)
    local e = event(period_id, day)
    e.uncounted = e.uncounted + uncounted
  end
  if u[13] and u[13] ~= 0 then ack_alerts(p, u[13]) end
  if u[11] and u[11] ~= 0 then
    local calls, records = get(p, 'calls'), get(p, 'records')
    local spend
    local priced = u[12]
    if priced and priced ~= 0 then
      local t = terms[priced[1]]
      spend = meter_cents(calls + get(p, 'rs'), t[3]) + meter_cents(records, t[4])
    end
    check_alerts(p, u[11], {calls, records, spend})
  end
end

local window_counts = {} -- an admission's {previous, current} per window, reused
local function admit(a)
  local t = terms[a[1]]
  local sliding, windows, calls_meter, records_meter = t[1] == 1, t[2], t[3], t[4]
  local p = periods[a[2]]
  local period_id, day, weight, route, listed, key_id = a[3], a[4], a[5], a[6], a[7], a[8]
  local cap, lease_wanted = a[10] or -1, a[11] or 0
  local code, flags = CODE_ADMITTED, 0

  local idem
  if (a[12] or 0) > 0 then
    idem = KEYS[a[12]]
    local found = redis.call('HMGET', idem, 'fp', 'st')
    if found[1] then
      if found[1] ~= a[13] then code = CODE_MISMATCH
      elseif found[2] == 'done' then flags = FLAG_REPLAY
      else code = CODE_IN_FLIGHT end
    end
  end
  local replay = flags == FLAG_REPLAY

  local counts = window_counts
  local window_flags, bit = 0, FLAG_WINDOW
  local room = math.huge -- units every window could still take after this request
  for i, w in ipairs(windows) do
    local limit, seconds, s = w[2], w[3], w[4]
    local previous, current = s.previous, s.current
    local used = current -- windows.estimate, written out: once per window and admission
    if sliding then used = previous * (seconds - s.elapsed) / seconds + current end
    counts[2 * i - 1], counts[2 * i] = previous, current
    if used + weight > limit then
      window_flags = window_flags + bit
    elseif lease_wanted > 0 then
      room = math.min(room, math.floor(limit - used - weight + 1e-9))
    end
    bit = bit * 2
  end
  if code == CODE_ADMITTED and window_flags > 0 then code = CODE_RATE end

  local calls_used, reserved, records_used = get(p, 'calls'), get(p, 'rs'), get(p, 'records')
  -- Units leased to fast-path processes count as used until they are flushed or given back.
  local committed = calls_used + reserved
  local spend = 0 -- meter_cents is 0 for a meter not billed (unit 0): most plans, so not called
  if calls_meter[2] > 0 then spend = meter_cents(committed, calls_meter) end
  if records_meter[2] > 0 then spend = spend + meter_cents(records_used, records_meter) end
  if code == CODE_ADMITTED and not replay then
    local calls_out = calls_meter[1] >= 0 and calls_meter[2] <= 0 and committed + weight > calls_meter[1]
    local records_out = records_meter[1] >= 0 and records_meter[2] <= 0 and records_used >= records_meter[1]
    if calls_out then flags = flags + FLAG_CALLS end
    if records_out then flags = flags + FLAG_RECORDS end
    if calls_out or records_out then code = CODE_QUOTA
    elseif cap >= 0 and spend >= cap then code = CODE_CAP end
  end
  flags = flags + window_flags

  -- The lease: extra units reserved in every window and against the calls quota, so that no
  -- process can ever admit past a limit; a process takes at most an eighth of what is left.
  -- Plans that bill overage are never leased: the spend cap must start exactly.
  local granted = 0
  local billing = calls_meter[2] > 0 or records_meter[2] > 0 or cap >= 0
  if code == CODE_ADMITTED and not replay and lease_wanted > 0 and not billing then
    local left = room
    if calls_meter[1] >= 0 then left = math.min(left, calls_meter[1] - committed - weight) end
    if left ~= math.huge then left = math.floor(left / 8) end
    granted = math.max(0, math.min(lease_wanted, left))
  end

  if code == CODE_ADMITTED then
    for i, w in ipairs(windows) do
      local current = counts[2 * i] + weight + granted
      counts[2 * i] = current
      local s = w[4]
      s.current, s.changed = current, true
    end
    if replay then
      add(p, 'replays', 1)
      local e = event(period_id, day)
      e.replays = e.replays + 1
    elseif weight > 0 then -- weight 0: a lease asked for ahead (the fast path's turn), no call
      count(p, period_id, day, route, listed, key_id, weight, 0, a.cell)
      calls_used = calls_used + weight
      if idem then
        redis.call('HSET', idem, 'fp', a[13], 'st', 'run')
        redis.call('EXPIRE', idem, IDEM_LOCK)
        flags = flags + FLAG_IDEM_SET
      end
    end
    if granted > 0 then add(p, 'rs', granted) end
    if weight > 0 then put(state, 'u:' .. key_id, time[1]) end
  elseif REASONS[code] then
    redis.call('HINCRBY', p.key, 'x:' .. REASONS[code], 1) -- refusals: rare, never in the view
    p.touched = true
  end
  local reply = {code, calls_used, records_used, spend, granted, flags, unpack(counts, 1, 2 * #windows)}
  if code == CODE_ADMITTED and granted == 0 and flags == 0 then -- most admissions, made once
    recorded_now[#recorded_now + 1] = '0,0,0'
  else
    recorded_now[#recorded_now + 1] = text(code) .. ',' .. text(granted) .. ',' .. text(flags)
  end
  if a[15] and a[15] ~= 0 and code < CODE_IN_FLIGHT then -- admitted or refused: the level now
    local priced = a[16] == 1
    local spend_now = spend
    if code == CODE_ADMITTED and not replay and priced then
      spend_now = meter_cents(committed + weight, calls_meter) + meter_cents(records_used, records_meter)
    end
    check_alerts(p, a[15], {calls_used, records_used, priced and spend_now or nil})
  end
  return reply
end

-- Resolve one admission of a batch the writer gave up on: `decided` ({code, granted, flags})
-- is nil when it never ran.
local function resolve_admission(a, decided, then_now)
  local p = periods[a[2]]
  local period_id, day, weight, route, listed, key_id = a[3], a[4], a[5], a[6], a[7], a[8]
  local served = a[14] == 1
  local code = decided and decided[1] or CODE_EXPIRED
  if decided and REASONS[code] then -- a refusal no client saw
    redis.call('HINCRBY', p.key, 'x:' .. REASONS[code], -1)
  end
  if code == CODE_ADMITTED then
    local granted, flags = decided[2], decided[3]
    local undo = served and 0 or weight
    for _, w in ipairs(terms[a[1]][2]) do
      window_give_back(w[1], w[3], math.floor(then_now / w[3]), undo + granted)
    end
    if granted > 0 then put(p, 'rs', math.max(0, get(p, 'rs') - granted)) end
    if not served then
      if flags % 2 == FLAG_REPLAY then
        add(p, 'replays', -1)
        local e = event(period_id, day)
        e.replays = e.replays - 1
      elseif weight > 0 then
        count(p, period_id, day, route, listed, key_id, -weight, 0, a.cell)
      end
    end
    -- whether served or not, the first run never completed its Idempotency-Key record
    if math.floor(flags / FLAG_IDEM_SET) % 2 == 1 and (a[12] or 0) > 0 then redis.call('DEL', KEYS[a[12]]) end
  elseif served then
    count(p, period_id, day, route, listed, key_id, weight, 0, a.cell)
  end
end

-- One customer's group of work.
local function run_group(group)
  local customer = group[1]
  state = reset(state_view, KEYS[group[2]])
  periods_used = 0
  periods, events, event_order, recorded_now = {}, {}, {}, {}
  group_number = group_number + 1
  windows_count = 0
  local stream = KEYS[group[3]]
  local admissions, usages, carries = group[4] or NONE, group[5] or NONE, group[6] or NONE

  -- The state hash first, with this writer's record: a repeat or a late batch stops here.
  want(state, record_field)
  want(state, 'e')
  for _, a in ipairs(admissions) do want_windows(a[1]) end
  for _, u in ipairs(usages) do want_returns(u) end
  for _, c in ipairs(carries) do
    for _, a in ipairs(c[2]) do want_windows(a[1]) end
    for _, u in ipairs(c[3]) do want_returns(u) end
  end
  load(state)
  local record = state.vals[record_field]
  local applied = -1
  local recorded -- where "sec|usec|code,granted,flags;..." starts: cut out only when read (rarely)
  if record then
    local bar = string.find(record, '|', 1, true)
    applied = tonumber(string.sub(record, 1, bar - 1))
    recorded = bar + 1
  end
  if applied >= seq then
    if applied == seq then
      local at_sec, at_usec, list = decisions(record, recorded)
      return {'dup', at_sec, at_usec, list}
    end
    return {'stale'}
  end
  read_windows() -- after the repeat check: a window in the old layout is rewritten when read

  for _, a in ipairs(admissions) do want_admission(a) end
  for _, u in ipairs(usages) do want_usage(u) end
  for _, c in ipairs(carries) do
    for _, a in ipairs(c[2]) do want_admission(a) end
    for _, u in ipairs(c[3]) do want_usage(u) end
  end
  for _, p in pairs(periods) do load(p) end

  -- Batches given up on first (see Carries above), then this batch's usage, then its admissions.
  for _, c in ipairs(carries) do
    local carried = c[1]
    if carried == applied then
      local at_sec, at_usec, list = decisions(record, recorded)
      local then_now = tonumber(at_sec) + tonumber(at_usec) / 1000000
      for i, a in ipairs(c[2]) do resolve_admission(a, list[i], then_now) end
    elseif carried > applied then
      for _, a in ipairs(c[2]) do resolve_admission(a, nil, now) end
      for _, u in ipairs(c[3]) do apply_usage(u) end
    end
  end
  for _, u in ipairs(usages) do apply_usage(u) end
  local replies = {}
  for i, a in ipairs(admissions) do
    if expired then
      replies[i] = {CODE_EXPIRED}
      recorded_now[i] = '8,0,0'
    else
      replies[i] = admit(a)
    end
  end

  -- Write back; expiries once per hash (a new period hash) or now and then (the state hash).
  local refresh = record == nil
  for _, p in pairs(periods) do
    local new = (p.n > 0 or p.touched) and not p.vals['_']
    if new then put(p, '_', 1) end
    store(p)
    if new then
      refresh = true
      -- never an expiry in the past, even for a period id that ended long ago (a replayed row)
      redis.call('EXPIREAT', p.key, math.max(p.period_end + AUDIT, sec + STATE_TTL))
      -- the periods this customer has counters for, newest last, for reading days back
      local known = redis.call('HGET', state.key, 'P') or ''
      if not string.find(',' .. known .. ',', ',' .. p.id .. ',', 1, true) then
        if known ~= '' then known = known .. ',' end
        known = known .. p.id
        local n = select(2, string.gsub(known, ',', ''))
        if n >= 24 then known = string.sub(known, string.find(known, ',', 1, true) + 1) end
        put(state, 'P', known)
      end
    end
  end
  for _, e in ipairs(event_order) do
    -- "<period>\t<day>\t<ts>\t<calls>\t<records>\t<replays>\t<unmetered>[\t<uncounted>]", then a
    -- line per count: "<route>\t<key id>\t<calls>\t<records>" (tabs never occur in either).
    local head = e.period .. '\t' .. e.day .. '\t' .. ts .. '\t' .. text(e.calls) .. '\t' .. text(e.records) .. '\t'
      .. text(e.replays) .. '\t' .. text(e.unmetered)
    if e.uncounted ~= 0 then head = head .. '\t' .. text(e.uncounted) end
    local body = head .. table.concat(e.rows)
    if EVENTS_MAX > 0 then
      redis.call('XADD', stream, 'MAXLEN', '~', EVENTS_MAX_TEXT, '*', 'v', '3', 'u', body)
    else
      redis.call('XADD', stream, '*', 'v', '3', 'u', body)
    end
  end
  put(state, record_field, seq_text .. '|' .. time[1] .. '|' .. time[2] .. '|' .. table.concat(recorded_now, ';'))
  if not record then
    -- A writer's first batch for this customer: forget writers silent for a day (gateway
    -- processes that ended), so that the state hash keeps one record per live writer.
    local writers = redis.call('HINCRBY', state.key, 'ln', 1)
    if writers > MAX_WRITERS then
      local all = redis.call('HGETALL', state.key)
      local live = 1
      for i = 1, #all, 2 do
        local field, value = all[i], all[i + 1]
        if string.sub(field, 1, 2) == 'l:' and field ~= record_field then
          local at = tonumber(string.match(value, '^%d+|(%d+)|'))
          if at and at < sec - 86400 then redis.call('HDEL', state.key, field) else live = live + 1 end
        end
      end
      redis.call('HSET', state.key, 'ln', live)
    end
  end
  -- The state hash and the stream live STATE_TTL from their last refresh: once a day (e: the
  -- day of the last one), when a period starts, or when a writer first meets this customer.
  if state.vals['e'] ~= TODAY then -- compared as text: no number made of it in every group
    put(state, 'e', TODAY)
    refresh = true
  end
  write_windows()
  store(state)
  if refresh then
    redis.call('EXPIRE', state.key, STATE_TTL)
    if redis.call('EXISTS', stream) == 1 then redis.call('EXPIRE', stream, STATE_TTL) end
  end
  local alerts
  for _, p in pairs(periods) do
    local pending = p.alerts and p.vals['A']
    if pending and pending ~= '' then
      alerts = alerts or {}
      alerts[#alerts + 1] = p.id
      alerts[#alerts + 1] = pending
    end
  end
  if alerts then return {'ok', replies, alerts} end
  return {'ok', replies}
end

local out = {time[1], time[2]}
for _, group in ipairs(batch.g) do out[#out + 1] = run_group(group) end
return out
