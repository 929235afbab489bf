-- meterguard ledger v2: every metering write of a gateway process, batched, retried by id.
--
-- One call carries the work of one event-loop tick of one writer (a gateway process) for one
-- hash slot, grouped per customer. Every key a group touches is declared in KEYS and shares the
-- customer's hash tag, so a cluster routes the call by them and, while a slot migrates, runs it
-- on the source only when every key is still there (else ASK or TRYAGAIN, and nothing runs).
--
-- Ids. A batch carries its writer id and sequence number. Each customer's state hash keeps, per
-- writer, the last sequence applied and its replies (`l:<writer>` = "<seq>|<reply json>"), so:
--   * a repeat of the last batch (a retry after a timeout, a reset, MOVED, ASK, TRYAGAIN or a
--     failover) returns the recorded replies and applies nothing ("dup");
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
--   T:s          hash  w:<window> = "<slot>:<count>:<previous count>"; u:<key id> = last use;
--                      l:<writer> = ledger record (ln: how many); e = day of the last expiry
--                      refresh; P = the period ids with counters, comma-separated, newest last
--   T:p:<period> hash  calls, records, rs (units leased, not yet flushed), replays, unmetered,
--                      x:<reason> (refusals), un + u:<label> (unmatched route labels seen),
--                      c<US><day><US><route><US><key> / r<US>... (calls / records per day, route
--                      and key: the audit cells; totals by route, key and day are sums of them)
--   T:events     stream one usage event per customer, period and day in each batch
--   T:i:<digest> hash  an Idempotency-Key: fp (request fingerprint), st = run | done
--
-- ARGV[1] = JSON {s = settings, w = writer, q = seq, d = deadline ms (0: none), t = terms, g = groups}
--   settings = {period audit seconds, max unmatched labels, "other" label, idempotency lock
--               seconds, events max length (0: none), state ttl seconds}
--   terms    = {sliding (0/1), {{window field, limit, seconds}, ...}, calls meter, records
--               meter, cap cents (-1: none)}; meter = {included (-1: none), unit (0: not
--               billed), {{up_to (-1: open-ended), price micros}, ...}}
--   group    = {customer, KEYS index of T:s, KEYS index of T:events, admissions, usages, carries}
--   admission= {terms, KEYS index of T:p, period id, day, weight, route, listed (0/1), key id,
--               period end, cap (-2: the terms'), lease wanted, KEYS index of T:i (0: none),
--               fingerprint, served on loss (0/1)}
--   usage    = {KEYS index of T:p, period id, day, period end, rows, consumed, returned, windows,
--               unmetered}; row = {route, listed, key id, calls, records}; window =
--               {window field, seconds, slot index, units to give back}
--   carry    = {seq, admissions, usages} exactly as sent in that batch
-- Returns {sec, usec, group reply, ...}; a group reply is {"ok"|"dup", json} or {"stale"}, the
-- json being {sec, usec, {admission reply, ...}} of the run that applied it; an admission reply
-- is {code, calls used, records used, spend cents, granted, flags, previous 1, count 1, ...}.

local CODE_ADMITTED, CODE_RATE, CODE_QUOTA, CODE_CAP = 0, 1, 2, 3
local CODE_IN_FLIGHT, CODE_MISMATCH, CODE_EXPIRED = 4, 5, 8
local FLAG_REPLAY, FLAG_IDEM_SET, FLAG_CALLS, FLAG_RECORDS, FLAG_WINDOW = 1, 2, 4, 8, 16
local REASONS = {[CODE_RATE] = 'rate_limited', [CODE_QUOTA] = 'quota', [CODE_CAP] = 'spend_cap'}
local US = '\31'
local MAX_WRITERS = 64

local batch = cjson.decode(ARGV[1])
local settings = batch.s
local AUDIT, MAX_UNLISTED, OTHER, IDEM_LOCK, EVENTS_MAX, STATE_TTL =
  settings[1], settings[2], settings[3], settings[4], settings[5], settings[6]
local writer, seq, deadline, terms = batch.w, batch.q, batch.d, batch.t

local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
local expired = deadline > 0 and sec * 1000 + math.floor(usec / 1000) > deadline
local today = math.floor(sec / 86400)

local function int(x) return string.format('%d', x) end

-- JSON of a (nested) list of numbers, integers exact: cjson prints 14 significant digits only,
-- and spend in cents or usage counts can pass 10^14.
local function encode(value)
  if type(value) == 'table' then
    local parts = {}
    for i, item in ipairs(value) do parts[i] = encode(item) end
    return '[' .. table.concat(parts, ',') .. ']'
  end
  if value == math.floor(value) and math.abs(value) < 9007199254740992 then return int(value) end
  return string.format('%.17g', value)
end

-- windows.estimate
local function estimate(sliding, previous, current, elapsed, seconds)
  if not sliding then return current end
  return previous * (seconds - elapsed) / seconds + current
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

-- A view of one hash: the fields a group needs are registered first and read with one HMGET,
-- changed in Lua, and written back with one HSET.
local function view(key)
  return {key = key, want = {}, order = {}, vals = {}, dirty = {}, dirty_order = {}}
end
local function want(v, field)
  if not v.want[field] then
    v.want[field] = true
    v.order[#v.order + 1] = field
  end
end
local function load(v)
  if #v.order == 0 then return end
  local got = redis.call('HMGET', v.key, unpack(v.order))
  for i, field in ipairs(v.order) do v.vals[field] = got[i] end
end
local function get(v, field) return tonumber(v.vals[field] or '0') end
local function put(v, field, value)
  v.vals[field] = value
  if not v.dirty[field] then
    v.dirty[field] = true
    v.dirty_order[#v.dirty_order + 1] = field
  end
end
local function add(v, field, amount)
  if amount ~= 0 then put(v, field, get(v, field) + amount) end
end
local function store(v)
  if #v.dirty_order == 0 then return false end
  local args = {}
  for _, field in ipairs(v.dirty_order) do
    local value = v.vals[field]
    if type(value) == 'number' then value = int(value) end
    args[#args + 1] = field
    args[#args + 1] = value
  end
  redis.call('HSET', v.key, unpack(args))
  return true
end

-- One customer's group of work.
local function run_group(group)
  local customer = group[1]
  local state = view(KEYS[group[2]])
  local stream = KEYS[group[3]]
  local admissions, usages, carries = group[4], group[5], group[6]
  local record_field = 'l:' .. writer

  -- The state hash first, with this writer's record: a repeat or a late batch stops here.
  want(state, record_field)
  want(state, 'e')
  want(state, 'P')
  want(state, 'ln')
  for _, a in ipairs(admissions) do
    for _, w in ipairs(terms[a[1]][2]) do want(state, 'w:' .. w[1]) end
  end
  for _, u in ipairs(usages) do
    for _, w in ipairs(u[8]) do want(state, 'w:' .. w[1]) end
  end
  for _, c in ipairs(carries) do
    for _, a in ipairs(c[2]) do
      for _, w in ipairs(terms[a[1]][2]) do want(state, 'w:' .. w[1]) end
    end
    for _, u in ipairs(c[3]) do
      for _, w in ipairs(u[8]) do want(state, 'w:' .. w[1]) end
    end
  end
  load(state)
  local record = state.vals[record_field]
  local applied = -1
  local recorded
  if record then
    local bar = string.find(record, '|', 1, true)
    applied = tonumber(string.sub(record, 1, bar - 1))
    recorded = string.sub(record, bar + 1)
  end
  if applied >= seq then
    if applied == seq then return {'dup', recorded} end
    return {'stale'}
  end

  local periods = {} -- KEYS index -> view
  local function period(index, period_end, period_id)
    local p = periods[index]
    if p == nil then
      p = view(KEYS[index])
      p.period_end = 0
      p.id = period_id
      want(p, '_')
      want(p, 'calls')
      want(p, 'records')
      want(p, 'rs')
      want(p, 'un')
      for _, reason in pairs(REASONS) do want(p, 'x:' .. reason) end
      periods[index] = p
    end
    if period_end and period_end > p.period_end then p.period_end = period_end end
    return p
  end
  local function want_cells(p, day, route, listed, key_id)
    if listed ~= 1 then
      want(p, 'u:' .. route)
      want(p, 'c' .. US .. day .. US .. OTHER .. US .. key_id)
      want(p, 'r' .. US .. day .. US .. OTHER .. US .. key_id)
    end
    want(p, 'c' .. US .. day .. US .. route .. US .. key_id)
    want(p, 'r' .. US .. day .. US .. route .. US .. key_id)
  end
  local function want_admission(a)
    local p = period(a[2], a[9], a[3])
    want_cells(p, a[4], a[6], a[7], a[8])
  end
  local function want_usage(u)
    local p = period(u[1], u[4], u[2])
    for _, row in ipairs(u[5]) do want_cells(p, u[3], row[1], row[2], row[3]) end
  end

  -- Pass 1: every field the group reads, one HMGET per period hash.
  for _, a in ipairs(admissions) do want_admission(a) end
  for _, u in ipairs(usages) do want_usage(u) end
  for _, c in ipairs(carries) do
    for _, a in ipairs(c[2]) do want_admission(a) end
    for _, u in ipairs(c[3]) do want_usage(u) end
  end
  for _, p in pairs(periods) do load(p) end

  -- Windows: "<slot>:<count>:<previous count>", read as (previous, current) of the slot now.
  local function window_counts(field, seconds)
    local index = math.floor(now / seconds)
    local raw = state.vals['w:' .. field]
    if not raw then return index, 0, 0 end
    local slot, count, before = string.match(raw, '^(-?%d+):(-?%d+):(-?%d+)$')
    slot, count, before = tonumber(slot), tonumber(count), tonumber(before)
    if slot == index then return index, before, count end
    if slot == index - 1 then return index, count, 0 end
    return index, 0, 0
  end
  local function set_window(field, index, previous, current)
    put(state, 'w:' .. field, int(index) .. ':' .. int(current) .. ':' .. int(previous))
  end
  -- Take units back out of the slot they were counted in, if the window still reads it.
  local function window_give_back(field, seconds, slot, units)
    local index, previous, current = window_counts(field, seconds)
    if slot == index then current = math.max(0, current - units)
    elseif slot == index - 1 then previous = math.max(0, previous - units)
    else return end
    set_window(field, index, previous, current)
  end

  -- Events, one per (period, day) of this group.
  local events, event_order = {}, {}
  local function event(period_id, day)
    local id = period_id .. '\n' .. day
    local e = events[id]
    if e == nil then
      e = {period = period_id, day = day, calls = 0, records = 0, replays = 0, unmetered = 0,
           routes = {}, keys = {}, n = 0}
      events[id] = e
      event_order[#event_order + 1] = id
    end
    e.n = e.n + 1
    return e
  end

  -- memory._route_label: unmatched "METHOD /path" labels are bounded per period.
  local function label(p, route, listed)
    if listed == 1 or p.vals['u:' .. route] then return route end
    if get(p, 'un') >= MAX_UNLISTED then return OTHER end
    put(p, 'u:' .. route, '1')
    add(p, 'un', 1)
    return route
  end

  -- Count calls and records in the period totals, the audit cells and the event.
  local function count(p, period_id, day, route, listed, key_id, calls, records)
    local name = label(p, route, listed)
    local cell = US .. day .. US .. name .. US .. key_id
    add(p, 'calls', calls)
    add(p, 'records', records)
    add(p, 'c' .. cell, calls)
    add(p, 'r' .. cell, records)
    local e = event(period_id, day)
    e.calls, e.records = e.calls + calls, e.records + records
    local r = e.routes[name] or {0, 0}
    r[1], r[2] = r[1] + calls, r[2] + records
    e.routes[name] = r
    local k = e.keys[key_id] or {0, 0}
    k[1], k[2] = k[1] + calls, k[2] + records
    e.keys[key_id] = k
  end

  local function apply_usage(u)
    local p = period(u[1])
    local period_id, day = u[2], u[3]
    for _, row in ipairs(u[5]) do
      count(p, period_id, day, row[1], row[2], row[3], row[4], row[5])
      if row[4] > 0 then put(state, 'u:' .. row[3], int(sec)) end
    end
    local consumed, returned = u[6], u[7]
    if consumed + returned > 0 then put(p, 'rs', math.max(0, get(p, 'rs') - consumed - returned)) end
    for _, w in ipairs(u[8]) do window_give_back(w[1], w[2], w[3], w[4]) end
    if u[9] > 0 then
      add(p, 'unmetered', u[9])
      local e = event(period_id, day)
      e.unmetered = e.unmetered + u[9]
    end
  end

  local function admit(a)
    local t = terms[a[1]]
    local sliding, windows, calls_meter, records_meter = t[1] == 1, t[2], t[3], t[4]
    local p = period(a[2])
    local period_id, day, weight, route, listed, key_id = a[3], a[4], a[5], a[6], a[7], a[8]
    local cap, lease_wanted = a[10], a[11]
    if cap == -2 then cap = t[5] end
    local code, flags = CODE_ADMITTED, 0

    local idem
    if a[12] > 0 then
      idem = KEYS[a[12]]
      local found = redis.call('HMGET', idem, 'fp', 'st')
      if found[1] then
        if found[1] ~= a[13] then code = CODE_MISMATCH
        elseif found[2] == 'done' then flags = FLAG_REPLAY
        else code = CODE_IN_FLIGHT end
      end
    end
    local replay = flags == FLAG_REPLAY

    local counts, window_flags = {}, 0
    local room = math.huge -- units every window could still take after this request
    for i, w in ipairs(windows) do
      local limit, seconds = w[2], w[3]
      local index, previous, current = window_counts(w[1], seconds)
      local used = estimate(sliding, previous, current, now - index * seconds, seconds)
      counts[i] = {index, previous, current}
      if used + weight > limit then
        window_flags = window_flags + FLAG_WINDOW * 2 ^ (i - 1)
      else
        room = math.min(room, math.floor(limit - used - weight + 1e-9))
      end
    end
    if code == CODE_ADMITTED and window_flags > 0 then code = CODE_RATE end

    local calls_used, reserved, records_used = get(p, 'calls'), get(p, 'rs'), get(p, 'records')
    -- Units leased to fast-path processes count as used until they are flushed or given back.
    local committed = calls_used + reserved
    local spend = meter_cents(committed, calls_meter) + meter_cents(records_used, records_meter)
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

    local reply = {code, calls_used, records_used, spend, granted, flags}
    if code == CODE_ADMITTED then
      for i, w in ipairs(windows) do
        local c = counts[i]
        c[3] = c[3] + weight + granted
        set_window(w[1], c[1], c[2], c[3])
      end
      if replay then
        add(p, 'replays', 1)
        event(period_id, day).replays = event(period_id, day).replays + 1
      else
        count(p, period_id, day, route, listed, key_id, weight, 0)
        reply[2] = calls_used + weight
        if idem then
          redis.call('HSET', idem, 'fp', a[13], 'st', 'run')
          redis.call('EXPIRE', idem, IDEM_LOCK)
          reply[6] = reply[6] + FLAG_IDEM_SET
        end
      end
      if granted > 0 then add(p, 'rs', granted) end
      put(state, 'u:' .. key_id, int(sec))
    elseif REASONS[code] then
      add(p, 'x:' .. REASONS[code], 1)
    end
    for i = 1, #windows do
      reply[#reply + 1] = counts[i][2]
      reply[#reply + 1] = counts[i][3]
    end
    return reply
  end

  -- Resolve one admission of a batch the writer gave up on. `reply` is nil when it never ran.
  local function resolve_admission(a, reply, then_now)
    local p = period(a[2])
    local period_id, day, weight, route, listed, key_id = a[3], a[4], a[5], a[6], a[7], a[8]
    local served = a[14] == 1
    local code = reply and reply[1] or CODE_EXPIRED
    if reply and REASONS[code] then add(p, 'x:' .. REASONS[code], -1) end -- a refusal no client saw
    if code == CODE_ADMITTED then
      local flags, granted = reply[6], reply[5]
      local undo = served and 0 or weight
      local t = terms[a[1]]
      for _, w in ipairs(t[2]) do
        window_give_back(w[1], w[3], math.floor(then_now / w[3]), undo + granted)
      end
      if granted > 0 then put(p, 'rs', math.max(0, get(p, 'rs') - granted)) end
      if not served then
        if flags % 2 == FLAG_REPLAY then
          add(p, 'replays', -1)
          event(period_id, day).replays = event(period_id, day).replays - 1
        else
          count(p, period_id, day, route, listed, key_id, -weight, 0)
        end
      end
      -- whether served or not, the first run never completed its Idempotency-Key record
      if math.floor(flags / FLAG_IDEM_SET) % 2 == 1 and a[12] > 0 then redis.call('DEL', KEYS[a[12]]) end
    elseif served then
      count(p, period_id, day, route, listed, key_id, weight, 0)
    end
  end

  for _, c in ipairs(carries) do
    local carried = c[1]
    if carried == applied then
      local old = cjson.decode(recorded)
      local then_now = old[1] + old[2] / 1000000
      for i, a in ipairs(c[2]) do resolve_admission(a, old[3][i], then_now) end
    elseif carried > applied then
      for _, a in ipairs(c[2]) do resolve_admission(a, nil, now) end
      for _, u in ipairs(c[3]) do apply_usage(u) end
    end
  end
  for _, u in ipairs(usages) do apply_usage(u) end
  local replies = {}
  for i, a in ipairs(admissions) do
    if expired then replies[i] = {CODE_EXPIRED} else replies[i] = admit(a) end
  end

  -- Pass 3: write back, expiries once per hash (new period hash; the state and stream daily).
  for _, p in pairs(periods) do
    local new = #p.dirty_order > 0 and not p.vals['_']
    if new then put(p, '_', '1') end
    store(p)
    if new then
      -- never an expiry in the past, even for a period id that ended long ago (a replayed row)
      redis.call('EXPIREAT', p.key, math.max(p.period_end + AUDIT, sec + STATE_TTL))
      -- the periods this customer has counters for, newest last, for reading days back
      local known = state.vals['P'] or ''
      if not string.find(',' .. known .. ',', ',' .. p.id .. ',', 1, true) then
        if known ~= '' then known = known .. ',' end
        known = known .. p.id
        local n = select(2, string.gsub(known, ',', ''))
        if n >= 24 then known = string.sub(known, string.find(known, ',', 1, true) + 1) end
        put(state, 'P', known)
      end
    end
  end
  for _, id in ipairs(event_order) do
    local e = events[id]
    local fields = {'v', '2', 'type', 'usage', 'customer', customer, 'period', e.period, 'day', e.day,
                    'ts', int(sec) .. '.' .. string.format('%06d', usec), 'calls', int(e.calls),
                    'records', int(e.records), 'replays', int(e.replays),
                    'routes', cjson.encode(e.routes), 'keys', cjson.encode(e.keys)}
    if e.unmetered ~= 0 then
      fields[#fields + 1] = 'unmetered'
      fields[#fields + 1] = int(e.unmetered)
    end
    if EVENTS_MAX > 0 then
      redis.call('XADD', stream, 'MAXLEN', '~', EVENTS_MAX, '*', unpack(fields))
    else
      redis.call('XADD', stream, '*', unpack(fields))
    end
  end
  local reply_json = encode({sec, usec, replies})
  put(state, record_field, int(seq) .. '|' .. reply_json)
  if not record then
    -- A writer's first batch for this customer: forget writers silent for a day (gateway
    -- processes that ended), so that the state hash keeps one record per live writer.
    add(state, 'ln', 1)
    if get(state, 'ln') > MAX_WRITERS then
      local all = redis.call('HGETALL', state.key)
      local live = 1
      for i = 1, #all, 2 do
        local field, value = all[i], all[i + 1]
        if string.sub(field, 1, 2) == 'l:' and field ~= record_field then
          local at = tonumber(string.match(value, '^%d+|%[(%d+)'))
          if at and at < sec - 86400 then redis.call('HDEL', state.key, field) else live = live + 1 end
        end
      end
      put(state, 'ln', live)
    end
  end
  if get(state, 'e') < today then
    put(state, 'e', today)
    store(state)
    redis.call('EXPIRE', state.key, STATE_TTL)
    if #event_order > 0 or redis.call('EXISTS', stream) == 1 then redis.call('EXPIRE', stream, STATE_TTL) end
  else
    store(state)
  end
  return {'ok', reply_json}
end

local out = {time[1], time[2]}
for _, group in ipairs(batch.g) do out[#out + 1] = run_group(group) end
return out
