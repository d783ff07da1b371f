-- Apply one micro-batch of user events atomically.
--
-- ARGV[1] is a JSON document built by stream/store.py:
--   users:  [[id, state_key, profile_key, expect]]   (expect = the version that was read)
--   norms:  [[item, delta]]                 increments of N[i] = sum_u r[u,i]^2
--   cooc:   [[i, [[j, delta], ...]]]        increments of C[i,j]
--   pop:    [[zset_key, item, log_weight]]  log forward-decayed popularity observations
--   cooc_prefix, sim_prefix                 key prefixes (ids appended) of C and of neighbours
--   norms_key, users_key, clock_key, clock, cooc_cap, k, shrinkage
--   stats_key, applied, duplicates          counters of events applied and skipped as duplicates
--   risk_key, risks: [[user, risk]]         churn risks of scored users (sorted set)
--   alerts_key, alerts_cap                  churn alerts list, newest first, capped
-- ARGV[2n + 2] and ARGV[2n + 3] are user n's new state and profile (JSON), n from 0; the
-- arguments after the last profile are churn alert documents (JSON), pushed in order.
--
-- If any user's version moved since it was read (another writer got there first), nothing is
-- written and the stale user ids are returned, so the caller re-reads and recomputes. Otherwise
-- every write happens, including each user's seen-event ids: dedupe and update are one step.

local p = cjson.decode(ARGV[1])
local function num(x) return string.format('%.17g', x) end

local stale = {}
for _, u in ipairs(p.users) do
  local version = tonumber(redis.call('HGET', u[2], 'v') or '0')
  if version ~= u[4] then stale[#stale + 1] = u[1] end
end
if #stale > 0 then return stale end

for n, u in ipairs(p.users) do
  redis.call('HSET', u[2], 'v', u[4] + 1, 's', ARGV[2 * n])
  redis.call('SET', u[3], ARGV[2 * n + 1])
  redis.call('SADD', p.users_key, u[1])
end

if p.risk_key then
  for _, r in ipairs(p.risks) do redis.call('ZADD', p.risk_key, num(r[2]), r[1]) end
  local first = 2 * #p.users + 2
  for n = first, #ARGV do redis.call('LPUSH', p.alerts_key, ARGV[n]) end
  if #ARGV >= first then redis.call('LTRIM', p.alerts_key, 0, p.alerts_cap - 1) end
end

local norms = {}
for _, n in ipairs(p.norms) do
  norms[n[1]] = tonumber(redis.call('HINCRBYFLOAT', p.norms_key, n[1], num(n[2])))
end
local function norm_of(item)
  local value = norms[item]
  if value == nil then
    value = tonumber(redis.call('HGET', p.norms_key, item) or '0')
    norms[item] = value
  end
  return value
end

-- Co-occurrence, and the similarity of each pair it touched. sim:i stores
-- C[i,j] / sqrt(N[j]) * C / (C + shrinkage): the cosine times sqrt(N[i]), a factor common to
-- all of i's neighbours, so i's ranking needs no rewrite when N[i] changes.
for _, entry in ipairs(p.cooc) do
  local cooc_key = p.cooc_prefix .. entry[1]
  local sim_key = p.sim_prefix .. entry[1]
  for _, pair in ipairs(entry[2]) do
    local count = tonumber(redis.call('ZINCRBY', cooc_key, num(pair[2]), pair[1]))
    local norm = norm_of(pair[1])
    if norm > 0 and count > 0 then
      local partial = count / math.sqrt(norm) * count / (count + p.shrinkage)
      redis.call('ZADD', sim_key, num(partial), pair[1])
    end
  end
  local size = redis.call('ZCARD', cooc_key)
  if size > p.cooc_cap then redis.call('ZREMRANGEBYRANK', cooc_key, 0, size - p.cooc_cap - 1) end
  size = redis.call('ZCARD', sim_key)
  if size > p.k then redis.call('ZREMRANGEBYRANK', sim_key, 0, size - p.k - 1) end
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
