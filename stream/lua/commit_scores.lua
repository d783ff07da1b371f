-- Write re-scored users (churn risk as the clock moved) atomically, skipping stale ones.
--
-- ARGV[1] is a JSON document built by stream/store.py:
--   users:  [[id, state_key, profile_key, expect]]   (expect = the version that was read)
--   risk_key, risks: [[user, risk]]; alerts_key, alerts_cap; outbox_key, outbox_due
-- ARGV[2n + 2] and ARGV[2n + 3] are user n's new state and profile (JSON), n from 0; the
-- arguments after the last profile are alert documents (JSON) of users that are not stale.
--
-- A user whose version moved since it was read (an event batch got there first) is not
-- written, and neither is their risk; their ids are returned so the caller can re-read them.
-- The caller leaves their alerts out only after this returns, so ARGV alerts of users that
-- turn out stale are dropped here too (alert documents carry their user_id).

local p = cjson.decode(ARGV[1])
local function num(x) return string.format('%.17g', x) end

local stale, is_stale = {}, {}
for _, u in ipairs(p.users) do
  local version = tonumber(redis.call('HGET', u[2], 'v') or '0')
  if version ~= u[4] then
    stale[#stale + 1] = u[1]
    is_stale[u[1]] = true
  end
end

for n, u in ipairs(p.users) do
  if not is_stale[u[1]] then
    redis.call('HSET', u[2], 'v', u[4] + 1, 's', ARGV[2 * n])
    redis.call('SET', u[3], ARGV[2 * n + 1])
  end
end
for _, r in ipairs(p.risks) do
  if not is_stale[r[1]] then redis.call('ZADD', p.risk_key, num(r[2]), r[1]) end
end
local first = 2 * #p.users + 2
local pushed = 0
for n = first, #ARGV do
  if not is_stale[p.alert_users[n - first + 1]] then
    redis.call('LPUSH', p.alerts_key, ARGV[n])
    redis.call('ZADD', p.outbox_key, num(p.outbox_due), ARGV[n])
    pushed = pushed + 1
  end
end
if pushed > 0 then redis.call('LTRIM', p.alerts_key, 0, p.alerts_cap - 1) end
return stale
