-- Records of one response: added to the period and day counters, per route and per key.
--
-- KEYS[1] period hash    KEYS[2] day hash
-- ARGV: records, route, listed (1/0), key_id, period end (epoch s), period audit seconds,
--       day ttl, max unlisted labels, "other" label.
-- Plain increments only: nothing here is read back by the caller, and the caller shields it
-- from cancellation so a client disconnect cannot lose billed records.

local records = tonumber(ARGV[1])
local route, listed, key_id = ARGV[2], ARGV[3] == '1', ARGV[4]
local period_end, period_audit, day_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_unlisted, other = tonumber(ARGV[8]), ARGV[9]

-- memory._route_label: unmatched "METHOD /path" labels are bounded per hash (period or day)
local function label(hash)
  if listed or redis.call('HEXISTS', hash, 'u:' .. route) == 1 then return route end
  local n = tonumber(redis.call('HGET', hash, 'un') or '0')
  if n >= max_unlisted then return other end
  redis.call('HSET', hash, 'u:' .. route, '1')
  redis.call('HINCRBY', hash, 'un', 1)
  return route
end

local sec = tonumber(redis.call('TIME')[1])
for _, hash in ipairs({KEYS[1], KEYS[2]}) do
  redis.call('HINCRBY', hash, 'records', records)
  redis.call('HINCRBY', hash, 'r:r:' .. label(hash), records)
  redis.call('HINCRBY', hash, 'k:r:' .. key_id, records)
end
redis.call('EXPIREAT', KEYS[1], math.max(period_end + period_audit, sec + day_ttl))
redis.call('EXPIRE', KEYS[2], day_ttl)
return 1
