-- Read customers' frequency ledgers. KEYS: ledger keys (of one customer group on Redis
-- Cluster: one hash slot). ARGV: 1 oldest score wanted, 2 the version member
-- (ledger.py `VERSION_MEMBER`, scored minus the version).
-- Returns per customer {minus the version or false, {member, score, ...}}.
local out = {}
for j = 1, #KEYS do
  out[#out + 1] = redis.call('ZSCORE', KEYS[j], ARGV[2]) or false
  out[#out + 1] = redis.call('ZRANGEBYSCORE', KEYS[j], ARGV[1], '+inf', 'WITHSCORES')
end
return out
