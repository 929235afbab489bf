-- Create a customer hash only if it does not exist yet (HSETNX covers one field only).
-- KEYS[1] customer hash; ARGV: field, value, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
