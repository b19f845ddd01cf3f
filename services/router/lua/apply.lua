-- Apply one notification's transition atomically: state, outbox, timers, timeline, index.
-- KEYS: 1 state hash, 2 outbox hash (of the input partition), 3 timers zset,
--       4 customer timeline list, 5 customer's notification set
-- ARGV: 1 expected version (0 = must not exist), 2 state json, 3 retention seconds,
--       4 timeline max records, 5 notification id,
--       6 msgpack [outbox {id, blob, ...}, timer adds {member, score, ...},
--                  timer deletes {member, ...}, timeline entries {json, ...}]
-- Returns 1 when applied, 0 when the state is not at the expected version (duplicate/race).
local expected = tonumber(ARGV[1])
local cur = redis.call('HGET', KEYS[1], 'v')
if expected == 0 then
  if cur then return 0 end
elseif (not cur) or tonumber(cur) ~= expected then
  return 0
end
local retention = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'v', expected + 1, 's', ARGV[2])
redis.call('EXPIRE', KEYS[1], retention)
local p = cmsgpack.unpack(ARGV[6])
local outbox, adds, dels, timeline = p[1], p[2], p[3], p[4]
if #outbox > 0 then redis.call('HSET', KEYS[2], unpack(outbox)) end
for j = 1, #adds, 2 do redis.call('ZADD', KEYS[3], adds[j + 1], adds[j]) end
if #dels > 0 then redis.call('ZREM', KEYS[3], unpack(dels)) end
if #timeline > 0 then
  redis.call('LPUSH', KEYS[4], unpack(timeline))
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
  redis.call('EXPIRE', KEYS[4], retention)
end
if expected == 0 then
  redis.call('SADD', KEYS[5], ARGV[5])
  redis.call('EXPIRE', KEYS[5], retention)
end
return 1
