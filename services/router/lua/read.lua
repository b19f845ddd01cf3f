-- Read many notification states in one reply (key names as in store.py `Keys`).
-- ARGV: 1 key prefix, 2.. notification ids. Returns {version or false, state or false, ...}.
local out = {}
for j = 2, #ARGV do
  local row = redis.call('HMGET', ARGV[1] .. 'n:' .. ARGV[j], 'v', 's')
  out[#out + 1] = row[1]
  out[#out + 1] = row[2]
end
return out
