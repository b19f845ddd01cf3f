-- Apply a chunk of notification transitions; each one atomically (the whole chunk is).
-- Key names follow services/router/store.py `Keys` (prefix .. 'n:' .. id and so on); they
-- are built here, so this script needs a single Redis (not Redis Cluster).
-- KEYS: 1 timers zset
-- ARGV: 1 retention seconds, 2 timeline max records, 3 key prefix,
--       4 msgpack list of transitions, each
--         {expected version (0 = must not exist), notification id, customer id, state json,
--          outbox key, outbox {id, blob, ...}, timer adds {member, score, ...},
--          timer deletes {member, ...}, timeline entries {json, ...}}
-- Returns a list: 1 where applied, 0 where the state was not at the expected version.
local retention = tonumber(ARGV[1])
local tlmax = tonumber(ARGV[2])
local prefix = ARGV[3]
local items = cmsgpack.unpack(ARGV[4])
local results = {}
for i, t in ipairs(items) do
  local expected, nid, cid = t[1], t[2], t[3]
  local skey = prefix .. 'n:' .. nid
  local cur = redis.call('HGET', skey, 'v')
  local ok = 1
  if expected == 0 then
    if cur then ok = 0 end
  elseif (not cur) or tonumber(cur) ~= expected then
    ok = 0
  end
  if ok == 1 then
    redis.call('HSET', skey, 'v', expected + 1, 's', t[4])
    redis.call('EXPIRE', skey, retention)
    local outbox, adds, dels, timeline = t[6], t[7], t[8], t[9]
    if #outbox > 0 then redis.call('HSET', t[5], unpack(outbox)) end
    for j = 1, #adds, 2 do redis.call('ZADD', KEYS[1], adds[j + 1], adds[j]) end
    if #dels > 0 then redis.call('ZREM', KEYS[1], unpack(dels)) end
    if #timeline > 0 then
      local tl = prefix .. 'tl:' .. cid
      redis.call('LPUSH', tl, unpack(timeline))
      redis.call('LTRIM', tl, 0, tlmax - 1)
      redis.call('EXPIRE', tl, retention)
    end
    if expected == 0 then
      local cn = prefix .. 'cn:' .. cid
      redis.call('SADD', cn, nid)
      redis.call('EXPIRE', cn, retention)
    end
  end
  results[i] = ok
end
return results
