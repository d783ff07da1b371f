-- Claim churn alerts of the outbox whose time has come, for this caller to (re)send.
--
-- ARGV: outbox key, now, lease (seconds), limit. An alert is due when its writer did not
-- confirm it on Kafka in time (it crashed, or Kafka was away). Claiming moves it a lease into
-- the future, so one worker sends it; if that one dies too, it comes due again.

local key, now, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', key, '-inf', string.format('%.17g', now), 'LIMIT', 0, limit)
local until_ = string.format('%.17g', now + lease)
for _, document in ipairs(due) do redis.call('ZADD', key, 'XX', until_, document) end
return due
