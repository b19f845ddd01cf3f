-- Apply a chunk of notification transitions; each one atomically (the whole chunk is).
-- Every key name comes from Python (services/router/store.py `Keys`), declared in KEYS: none
-- is spelled or built here. On Redis Cluster every transition of one call is of one customer
-- group (store.py `Store.apply`), so all its keys are in one hash slot; declared, they are
-- checked before the script runs (during a resharding: ASK, or TRYAGAIN while the slot's keys
-- are split between two nodes), so a transition is never cut short by a key that moved.
-- KEYS: 6 per transition, in order: state, customer's notification set, timeline, ledger,
--       the group's timers zset, the outbox of the input partition (for the group)
-- ARGV: 1 retention seconds, 2 timeline max records, 3 ledger ttl seconds,
--       4 ledger prune-before score, 5 the ledger's version member (ledger.py, scored minus
--       the version); then each transition as a run of arguments (store.py `Store.apply`),
--       a list being its length (number of values) then its values:
--         expected version (0 = must not exist), notification id, state json,
--         outbox {id, blob, ...}, timer adds {score, member, ...},
--         timer deletes {member, ...}, timeline entries {json, ...},
--         ledger version the decision read (-1: the decision did not read the ledger),
--         ledger adds {score, member, ...}, ledger removes {member, ...}
-- Returns a list: 1 applied; 0 state not at the expected version; 2 the ledger changed since
-- it was read (decide again). Every check runs before the first write of its transition.
-- (Flat arguments rather than one msgpack blob: cmsgpack.unpack cost Redis ~20 µs per
-- transition, more than all of the writes below; see docs/performance.md.)
local retention = tonumber(ARGV[1])
local tlmax = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local prune_before = ARGV[4]
local VERSION = ARGV[5]
local STEP = 500 -- at most this many values per variadic call (Lua's stack is bounded)

-- redis.call(cmd, key, ARGV[a..b]) in calls of at most STEP * width values
local function variadic(cmd, key, a, b, width)
  local i = a
  while i <= b do
    local j = math.min(b, i + STEP * width - 1)
    redis.call(cmd, key, unpack(ARGV, i, j))
    i = j + 1
  end
end

-- whether the state at skey is at version `expected` (0: no state)
-- the ledger's version (0: none yet)
local function ledger_version(lkey)
  return -(tonumber(redis.call('ZSCORE', lkey, VERSION)) or 0)
end

local function state_at(skey, expected)
  local cur = redis.pcall('GET', skey)
  -- a state written before states were strings (a hash: v, s); SET below replaces it
  if type(cur) == 'table' and cur.err then cur = redis.call('HGET', skey, 's') end
  if expected == 0 then return not cur end
  return cur ~= false and tonumber(string.match(cur, '^{"v":(%d+)')) == expected
end

local results = {}
local p = 6
local k = 0
local n = 0
local last = #ARGV
while p <= last do
  local skey, cnkey, tlkey = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local lkey, timers, obkey = KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
  k = k + 6
  local expected = tonumber(ARGV[p])
  local nid, sjson = ARGV[p + 1], ARGV[p + 2]
  p = p + 3
  -- the lists: [start, end] of each run of values
  local ob_a = p + 1; p = ob_a + tonumber(ARGV[p]); local ob_b = p - 1
  local ta_a = p + 1; p = ta_a + tonumber(ARGV[p]); local ta_b = p - 1
  local td_a = p + 1; p = td_a + tonumber(ARGV[p]); local td_b = p - 1
  local tl_a = p + 1; p = tl_a + tonumber(ARGV[p]); local tl_b = p - 1
  local lread = tonumber(ARGV[p])
  p = p + 1
  local la_a = p + 1; p = la_a + tonumber(ARGV[p]); local la_b = p - 1
  local lr_a = p + 1; p = lr_a + tonumber(ARGV[p]); local lr_b = p - 1

  -- the state is its JSON, which opens with its version: {"v":<n>,... (state.py)
  local ok
  if lread >= 0 and ledger_version(lkey) ~= lread then
    ok = state_at(skey, expected) and 2 or 0 -- a state that moved on answers 0 first
  elseif expected == 0 then
    -- check and write in one: only if no notification has this id yet
    ok = redis.call('SET', skey, sjson, 'EX', retention, 'NX') and 1 or 0
  elseif state_at(skey, expected) then
    redis.call('SET', skey, sjson, 'EX', retention)
    ok = 1
  else
    ok = 0
  end
  if ok == 1 then
    variadic('HSET', obkey, ob_a, ob_b, 2)
    variadic('ZADD', timers, ta_a, ta_b, 2)
    variadic('ZREM', timers, td_a, td_b, 1)
    if tl_b >= tl_a then
      variadic('LPUSH', tlkey, tl_a, tl_b, 1)
      redis.call('LTRIM', tlkey, 0, tlmax - 1)
      redis.call('EXPIRE', tlkey, retention)
    end
    if expected == 0 then
      redis.call('SADD', cnkey, nid)
      redis.call('EXPIRE', cnkey, retention)
    end
    if la_b >= la_a or lr_b >= lr_a then
      -- the contacts and the new version in one ZADD (unless the list is very long)
      local v = (lread >= 0 and lread or ledger_version(lkey)) + 1
      if la_b - la_a < STEP * 2 then
        redis.call('ZADD', lkey, -v, VERSION, unpack(ARGV, la_a, la_b))
      else
        redis.call('ZADD', lkey, -v, VERSION)
        variadic('ZADD', lkey, la_a, la_b, 2)
      end
      variadic('ZREM', lkey, lr_a, lr_b, 1)
      -- prune contacts older than every cap window on every 16th write (reads skip them)
      if v % 16 == 0 then
        redis.call('ZREMRANGEBYSCORE', lkey, 0, '(' .. prune_before)
      end
      redis.call('EXPIRE', lkey, ttl)
    end
  end
  n = n + 1
  results[n] = ok
end
return results
