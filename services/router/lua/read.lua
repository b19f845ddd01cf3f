-- Read many notification states in one reply. ARGV: state keys (store.py `Keys.state`).
-- Returns {version or false, state or false, ...}.
local out = {}
for j = 1, #ARGV do
  local row = redis.call('HMGET', ARGV[j], 'v', 's')
  out[#out + 1] = row[1]
  out[#out + 1] = row[2]
end
return out
