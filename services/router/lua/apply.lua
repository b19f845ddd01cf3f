-- Apply one notification's transition atomically: state, outbox, timers, timeline, index.
-- KEYS: 1 state hash, 2 outbox hash (of the input partition), 3 timers zset,
--       4 customer timeline list, 5 customer's notification set
-- ARGV: 1 expected version (0 = must not exist), 2 state json, 3 new version,
--       4 retention seconds, 5 timeline max records, 6 notification id,
--       then counted groups: outbox (id, blob)*, timer adds (member, score)*,
--       timer deletes (member)*, timeline entries (json)*
-- Returns 1 when applied, 0 when the state is not at the expected version (duplicate/race).
local expected = tonumber(ARGV[1])
local cur = redis.call('HGET', KEYS[1], 'v')
if expected == 0 then
  if cur then return 0 end
elseif (not cur) or tonumber(cur) ~= expected then
  return 0
end
local retention = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'v', ARGV[3], 's', ARGV[2])
redis.call('EXPIRE', KEYS[1], retention)
local i = 7
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZADD', KEYS[3], ARGV[i + 1], ARGV[i]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZREM', KEYS[3], ARGV[i]); i = i + 1 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('LPUSH', KEYS[4], ARGV[i]); i = i + 1 end
if n > 0 then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
  redis.call('EXPIRE', KEYS[4], retention)
end
if expected == 0 then
  redis.call('SADD', KEYS[5], ARGV[6])
  redis.call('EXPIRE', KEYS[5], retention)
end
return 1
