-- Erase what tongda holds about a customer (profile tombstone): profile, timeline,
-- notification states. comms.audit on Kafka keeps what the law requires.
-- KEYS: 1 profile, 2 timeline, 3 customer's notification set; ARGV: 1 state key prefix
local ids = redis.call('SMEMBERS', KEYS[3])
for _, id in ipairs(ids) do redis.call('DEL', ARGV[1] .. id) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return #ids
