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
-- Numbers go to redis.call as strings: Redis formats a Lua number argument with
-- snprintf("%.17g"), ~2,300 instructions each (more than many of the commands).
local retention = ARGV[1]
local tlmax = tonumber(ARGV[2])
local tltop = string.format('%d', tlmax - 1)
local ttl = ARGV[3]
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

-- Writes to the group's keys (the outbox, the timers), which most transitions of a call
-- share: consecutive writes of one command to one key are merged into one call, made when
-- that key's next write is another command (so each key's writes keep their order), when
-- it holds LIMIT values, or at the end. Each redis.call costs Redis ~7-9 k instructions of
-- its own (the call, the command's dispatch, its propagation to the AOF) beside its values.
-- Nothing here reads these keys, and the script is atomic: the same writes, fewer calls.
local LIMIT = STEP * 2 -- values per merged call (even: whole ZADD pairs)
local pend_cmd, pend_args, pend_n, pend_keys, npend = {}, {}, {}, {}, 0
local function flush(key)
  local n = pend_n[key]
  if n > 0 then
    redis.call(pend_cmd[key], key, unpack(pend_args[key], 1, n))
    pend_n[key] = 0
  end
end
-- redis.call(cmd, key, ARGV[a..b]), merged with the key's pending writes of cmd
local function merged(cmd, key, a, b)
  if b < a then return end
  local args = pend_args[key]
  if not args then
    args = {}
    pend_args[key], pend_n[key] = args, 0
    npend = npend + 1
    pend_keys[npend] = key
  end
  if pend_cmd[key] ~= cmd then
    flush(key)
    pend_cmd[key] = cmd
  end
  local n = pend_n[key]
  for i = a, b do
    if n >= LIMIT then
      pend_n[key] = n
      flush(key)
      n = 0
    end
    n = n + 1
    args[n] = ARGV[i]
  end
  pend_n[key] = n
end

-- the ledger's version (0: none yet), read once per ledger per call: this call's own writes
-- keep it (versions[lkey]), and nothing else writes the ledger while the script runs
local versions = {}
local function ledger_version(lkey)
  local v = versions[lkey]
  if v == nil then
    v = -(tonumber(redis.call('ZSCORE', lkey, VERSION)) or 0)
    versions[lkey] = v
  end
  return v
end

-- whether the state at skey is at version `expected` (0: no state). Only the state's head
-- is read (GETRANGE, "" where there is none): its version is in the first bytes, and the
-- whole JSON would be copied into Lua for nothing.
local function state_at(skey, expected)
  local cur = redis.pcall('GETRANGE', skey, '0', '40')
  -- a state written before states were strings (a hash: v, s); SET below replaces it
  if type(cur) == 'table' and cur.err then cur = redis.call('HGET', skey, 's') end
  if cur == '' then cur = false end
  if expected == 0 then return not cur end
  return cur ~= false and tonumber(string.match(cur, '^{"v":(%d+)')) == expected
end

-- the keys to EXPIRE once the chunk is written, each once (a customer's keys recur when it
-- has several transitions in a call; time stands still while a script runs, so a single
-- EXPIRE at the end leaves the same deadline as one after each write)
local expiring, expiring_ttl, nexp = {}, {}, 0
local function expire_later(key, seconds)
  if not expiring_ttl[key] then
    nexp = nexp + 1
    expiring[nexp] = key
  end
  expiring_ttl[key] = seconds
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
    merged('HSET', obkey, ob_a, ob_b)
    merged('ZADD', timers, ta_a, ta_b)
    merged('ZREM', timers, td_a, td_b)
    if tl_b >= tl_a then
      local len = 0
      local i = tl_a
      while i <= tl_b do -- variadic, keeping LPUSH's reply: the list's length
        local j = math.min(tl_b, i + STEP - 1)
        len = redis.call('LPUSH', tlkey, unpack(ARGV, i, j))
        i = j + 1
      end
      if len > tlmax then redis.call('LTRIM', tlkey, '0', tltop) end
      expire_later(tlkey, retention)
    end
    if expected == 0 then
      redis.call('SADD', cnkey, nid)
      expire_later(cnkey, retention)
    end
    if la_b >= la_a or lr_b >= lr_a then
      -- the contacts and the new version in one ZADD (unless the list is very long)
      local v = ledger_version(lkey) + 1 -- = lread + 1 when the decision read it
      versions[lkey] = v
      local score = string.format('%d', -v) -- an integer: printed as such, not as a double
      if la_b - la_a < STEP * 2 then
        redis.call('ZADD', lkey, score, VERSION, unpack(ARGV, la_a, la_b))
      else
        redis.call('ZADD', lkey, score, VERSION)
        variadic('ZADD', lkey, la_a, la_b, 2)
      end
      variadic('ZREM', lkey, lr_a, lr_b, 1)
      -- prune contacts older than every cap window on every 16th write (reads skip them)
      if v % 16 == 0 then
        redis.call('ZREMRANGEBYSCORE', lkey, '0', '(' .. prune_before)
      end
      expire_later(lkey, ttl)
    end
  end
  n = n + 1
  results[n] = ok
end
for i = 1, npend do
  flush(pend_keys[i])
end
for i = 1, nexp do
  local key = expiring[i]
  redis.call('EXPIRE', key, expiring_ttl[key])
end
return results
