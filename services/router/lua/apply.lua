-- Apply a chunk of notification transitions; each one atomically (the whole chunk is).
-- Every key name comes from Python (services/router/store.py `Keys`): none is built here.
-- KEYS: 1 timers zset
-- ARGV: 1 retention seconds, 2 timeline max records,
--       3 msgpack list of transitions, each (positions):
--         1 expected version (0 = must not exist), 2 state key, 3 state json,
--         4 customer's notification set key, 5 notification id, 6 timeline key,
--         7 outbox key, 8 outbox {id, blob, ...}, 9 timer adds {member, score, ...},
--         10 timer deletes {member, ...}, 11 timeline entries {json, ...},
--         12 ledger key, 13 ledger version key, 14 ledger version the decision read
--            (-1: the decision did not read the ledger), 15 ledger adds {member, score, ...},
--         16 ledger removes {member, ...}, 17 ledger prune-before score, 18 ledger ttl seconds
-- Returns a list: 1 applied; 0 state not at the expected version; 2 the ledger changed since
-- it was read (decide again). Every check runs before the first write of its transition.
local retention = tonumber(ARGV[1])
local tlmax = tonumber(ARGV[2])
local items = cmsgpack.unpack(ARGV[3])
local STEP = 500 -- at most this many values per variadic call (Lua's stack is bounded)

local function each_chunk(list, width, fn)
  local n = #list
  local i = 1
  while i <= n do
    local j = math.min(n, i + STEP * width - 1)
    fn(i, j)
    i = j + 1
  end
end

local results = {}
for i, t in ipairs(items) do
  local expected, skey = t[1], t[2]
  local ok = 1
  local cur = redis.call('HGET', skey, 'v')
  if expected == 0 then
    if cur then ok = 0 end
  elseif (not cur) or tonumber(cur) ~= expected then
    ok = 0
  end
  if ok == 1 and t[14] >= 0 then
    local lv = tonumber(redis.call('GET', t[13]) or '0')
    if lv ~= t[14] then ok = 2 end
  end
  if ok == 1 then
    local outbox, adds, dels, timeline = t[8], t[9], t[10], t[11]
    local ladds, lrems = t[15], t[16]
    redis.call('HSET', skey, 'v', expected + 1, 's', t[3])
    redis.call('EXPIRE', skey, retention)
    each_chunk(outbox, 2, function(a, b) redis.call('HSET', t[7], unpack(outbox, a, b)) end)
    for j = 1, #adds, 2 do redis.call('ZADD', KEYS[1], adds[j + 1], adds[j]) end
    each_chunk(dels, 1, function(a, b) redis.call('ZREM', KEYS[1], unpack(dels, a, b)) end)
    if #timeline > 0 then
      each_chunk(timeline, 1, function(a, b) redis.call('LPUSH', t[6], unpack(timeline, a, b)) end)
      redis.call('LTRIM', t[6], 0, tlmax - 1)
      redis.call('EXPIRE', t[6], retention)
    end
    if expected == 0 then
      redis.call('SADD', t[4], t[5])
      redis.call('EXPIRE', t[4], retention)
    end
    if #ladds > 0 or #lrems > 0 then
      for j = 1, #ladds, 2 do redis.call('ZADD', t[12], ladds[j + 1], ladds[j]) end
      each_chunk(lrems, 1, function(a, b) redis.call('ZREM', t[12], unpack(lrems, a, b)) end)
      redis.call('EXPIRE', t[12], t[18])
      -- prune entries older than every cap window on every 16th write (reads skip them)
      if redis.call('INCR', t[13]) % 16 == 1 then
        redis.call('ZREMRANGEBYSCORE', t[12], '-inf', '(' .. t[17])
      end
      redis.call('EXPIRE', t[13], t[18])
    end
  end
  results[i] = ok
end
return results
