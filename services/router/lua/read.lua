-- Read many notification states in one reply. KEYS: state keys (store.py `Keys.state`), all
-- of one customer group on Redis Cluster (one hash slot).
-- Returns {state or false, ...}: each state is its JSON, version included (`v`). A state
-- written before states were strings (a hash: v, s) is read from its `s` field; apply.lua
-- writes it back as a string on its next transition.
local out = {}
for j = 1, #KEYS do
  local s = redis.pcall('GET', KEYS[j])
  if type(s) == 'table' and s.err then s = redis.call('HGET', KEYS[j], 's') end
  out[j] = s
end
return out
