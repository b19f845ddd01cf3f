-- Erase what tongda holds about a customer (profile tombstone): profile, timeline, frequency
-- ledger, notification states. comms.audit on Kafka keeps what the law requires.
-- KEYS: 1 profile, 2 timeline, 3 customer's notification set, 4 ledger (and its version),
--       5.. other keys of the customer (controls: store.py)
-- ARGV: 1 the state key of a notification id is ARGV[1] .. id (store.py `Keys.state`)
-- All of one customer: one hash slot (its group's) on Redis Cluster.
local ids = redis.call('SMEMBERS', KEYS[3])
for _, id in ipairs(ids) do redis.call('DEL', ARGV[1] .. id) end
redis.call('DEL', unpack(KEYS))
return #ids
