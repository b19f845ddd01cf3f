-- Read many notification states in one reply. ARGV: state keys (store.py `Keys.state`).
-- Returns {state or false, ...}: each state is its JSON, version included (`v`). A state
-- written before states were strings (a hash: v, s) is read from its `s` field; apply.lua
-- writes it back as a string on its next transition.
local out = {}
for j = 1, #ARGV do
  local s = redis.pcall('GET', ARGV[j])
  if type(s) == 'table' and s.err then s = redis.call('HGET', ARGV[j], 's') end
  out[j] = s
end
return out
