-- Apply one micro-batch of user events atomically.
--
-- ARGV[1] is a JSON document built by stream/store.py:
--   users:  [{id, state_key, profile_key, expect, state, profile}]   (expect = version read)
--   norms:  [[item, delta]]                 increments of N[i] = sum_u r[u,i]^2
--   cooc:   [[cooc_key, sim_key, i, j, delta]]   increments of C[i,j]
--   pop:    [[zset_key, item, log_weight]]  log forward-decayed popularity observations
--   norms_key, users_key, clock_key, clock, cooc_cap, k, shrinkage
--   stats_key, applied, duplicates        counters of events applied and skipped as duplicates
--
-- If any user's version moved since it was read (another writer got there first), nothing is
-- written and the stale user ids are returned, so the caller re-reads and recomputes. Otherwise
-- every write happens, including each user's seen-event ids: dedupe and update are one step.

local p = cjson.decode(ARGV[1])
local function num(x) return string.format('%.17g', x) end

local stale = {}
for _, u in ipairs(p.users) do
  local version = tonumber(redis.call('HGET', u.state_key, 'v') or '0')
  if version ~= u.expect then stale[#stale + 1] = u.id end
end
if #stale > 0 then return stale end

for _, u in ipairs(p.users) do
  redis.call('HSET', u.state_key, 'v', u.expect + 1, 's', u.state)
  redis.call('SET', u.profile_key, u.profile)
  redis.call('SADD', p.users_key, u.id)
end

for _, n in ipairs(p.norms) do
  redis.call('HINCRBYFLOAT', p.norms_key, n[1], num(n[2]))
end

-- Co-occurrence, and the similarity of each pair it touched. sim:i stores
-- C[i,j] / sqrt(N[j]) * C / (C + shrinkage): the cosine times sqrt(N[i]), a factor common to
-- all of i's neighbours, so i's ranking needs no rewrite when N[i] changes.
local trim_cooc, trim_sim = {}, {}
for _, c in ipairs(p.cooc) do
  local count = tonumber(redis.call('ZINCRBY', c[1], num(c[5]), c[4]))
  local norm = tonumber(redis.call('HGET', p.norms_key, c[4]) or '0')
  if norm > 0 and count > 0 then
    local partial = count / math.sqrt(norm) * count / (count + p.shrinkage)
    redis.call('ZADD', c[2], num(partial), c[4])
  end
  trim_cooc[c[1]] = true
  trim_sim[c[2]] = true
end
for key in pairs(trim_cooc) do
  local size = redis.call('ZCARD', key)
  if size > p.cooc_cap then redis.call('ZREMRANGEBYRANK', key, 0, size - p.cooc_cap - 1) end
end
for key in pairs(trim_sim) do
  local size = redis.call('ZCARD', key)
  if size > p.k then redis.call('ZREMRANGEBYRANK', key, 0, size - p.k - 1) end
end

for _, e in ipairs(p.pop) do
  local current = redis.call('ZSCORE', e[1], e[2])
  local score = e[3]
  if current then
    current = tonumber(current)
    local high, low = math.max(current, score), math.min(current, score)
    score = high + math.log(1 + math.exp(low - high))
  end
  redis.call('ZADD', e[1], num(score), e[2])
end

redis.call('HINCRBY', p.stats_key, 'applied', p.applied)
redis.call('HINCRBY', p.stats_key, 'duplicates', p.duplicates)

local clock = tonumber(redis.call('GET', p.clock_key) or '-1')
if p.clock > clock then redis.call('SET', p.clock_key, num(p.clock)) end
return stale
