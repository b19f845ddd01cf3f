-- Read customers' frequency ledgers. ARGV: 1 oldest score wanted, then pairs
-- (ledger key, ledger version key). Returns per customer {version or false, {member, score, ...}}.
local out = {}
for j = 2, #ARGV, 2 do
  out[#out + 1] = redis.call('GET', ARGV[j + 1]) or false
  out[#out + 1] = redis.call('ZRANGEBYSCORE', ARGV[j], ARGV[1], '+inf', 'WITHSCORES')
end
return out
