-- Remove claimed work whose timer event was produced, unless it was rescheduled meanwhile.
-- KEYS: 1 timers zset; ARGV: 1 lease_until, 2.. members
local removed = 0
for j = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[j])
  if score and tonumber(score) == tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[j]); removed = removed + 1
  end
end
return removed
