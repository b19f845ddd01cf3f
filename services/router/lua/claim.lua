-- Claim due scheduled work: members with score <= now get a lease (score = lease_until)
-- so a crashed claimer's work comes due again. KEYS: 1 timers zset
-- ARGV: 1 now, 2 lease_until, 3 limit. Returns a flat list member, original score, ...
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for j = 1, #due, 2 do redis.call('ZADD', KEYS[1], ARGV[2], due[j]) end
return due
