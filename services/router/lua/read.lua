-- Read many notification states in one reply. ARGV: state keys (store.py `Keys.state`).
-- Returns {state or false, ...}: each state is its JSON, version included (`v`).
local out = {}
for j = 1, #ARGV do
  out[j] = redis.call('GET', ARGV[j])
end
return out
