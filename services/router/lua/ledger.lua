-- Read customers' frequency ledgers. ARGV: 1 oldest score wanted, 2 the version member
-- (ledger.py `VERSION_MEMBER`, scored minus the version), then ledger keys.
-- Returns per customer {minus the version or false, {member, score, ...}}.
local out = {}
for j = 3, #ARGV do
  out[#out + 1] = redis.call('ZSCORE', ARGV[j], ARGV[2]) or false
  out[#out + 1] = redis.call('ZRANGEBYSCORE', ARGV[j], ARGV[1], '+inf', 'WITHSCORES')
end
return out
