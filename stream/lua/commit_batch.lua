-- Apply one micro-batch of user events atomically.
--
-- ARGV[1] is a JSON document built by stream/store.py:
--   users:  [[id, state_key, profile_key, expect]]   (expect = the version that was read)
--   norms:  [[item, delta]]                 increments of N[i] = sum_u r[u,i]^2
--   cooc:   [[i, [j, delta, j, delta, ...]]]  increments of C[i,j]
--   pop:    [[zset_key, [[item, log_weight], ...]]]  log forward-decayed popularity, per set
--   cooc_prefix, sim_prefix, nbc_prefix     key prefixes (ids appended) of C, of neighbours and
--                                           of the neighbours' counts (neighbour_counts.lua)
--   norms_key, users_key, clock_key, clock, cooc_cap, k, shrinkage
--   rank_scale                              neighbour ranks are stored times this, rounded
--   stats_key, applied, duplicates          counters of events applied and skipped as duplicates
--   risk_key, risks: [[user, risk]]         churn risks of scored users (sorted set)
--   alerts_key, alerts_cap                  churn alerts list, newest first, capped
--   outbox_key, outbox_due                  alerts also wait there until they are on Kafka
-- ARGV[2n + 2] and ARGV[2n + 3] are user n's new state and profile (JSON), n from 0; the
-- arguments after the last profile are churn alert documents (JSON), pushed in order.
--
-- If any user's version moved since it was read (another writer got there first), nothing is
-- written and the stale user ids are returned, so the caller re-reads and recomputes. Otherwise
-- every write happens, including each user's seen-event ids: dedupe and update are one step.

local p = cjson.decode(ARGV[1])
-- Exact decimal text of a double, for arguments Redis parses as long double (HINCRBYFLOAT) or
-- stores as text. Sorted-set scores are passed as Lua numbers: Redis formats a number argument
-- itself (%.17g, or shortest round trip from 7.2), which parses back to the same double and
-- costs far less than string.format in the per-pair loops.
local function num(x) return string.format('%.17g', x) end
local CHUNK = 1000 -- members per command, well inside Lua's stack

-- One command per chunk of arguments: a call from Lua costs more than the work of one member,
-- so every set is read and written with one command per key, not one per member.
local function each_chunk(items, width, fn)
  for first = 1, #items, CHUNK * width do
    fn(first, math.min(first + CHUNK * width - 1, #items))
  end
end
local function read_scores(key, members)
  local scores = {}
  each_chunk(members, 1, function(first, last)
    local reply = redis.call('ZMSCORE', key, unpack(members, first, last))
    for n = 1, #reply do scores[first + n - 1] = reply[n] and tonumber(reply[n]) end
  end)
  return scores
end
local function write_scores(key, flat) -- flat: score, member, score, member, ...
  each_chunk(flat, 2, function(first, last) redis.call('ZADD', key, unpack(flat, first, last)) end)
end
local function trim(key, cap) -- drops the lowest members past cap; returns them
  local size = redis.call('ZCARD', key)
  if size <= cap then return {} end
  local dropped = {}
  local popped = redis.call('ZPOPMIN', key, size - cap) -- member, score, ...
  for n = 1, #popped, 2 do dropped[#dropped + 1] = popped[n] end
  return dropped
end

local stale = {}
for _, u in ipairs(p.users) do
  local version = tonumber(redis.call('HGET', u[2], 'v') or '0')
  if version ~= u[4] then stale[#stale + 1] = u[1] end
end
if #stale > 0 then return stale end

local user_ids = {}
for n, u in ipairs(p.users) do
  redis.call('HSET', u[2], 'v', u[4] + 1, 's', ARGV[2 * n])
  redis.call('SET', u[3], ARGV[2 * n + 1])
  user_ids[n] = u[1]
end
each_chunk(user_ids, 1, function(first, last)
  redis.call('SADD', p.users_key, unpack(user_ids, first, last))
end)

if p.risk_key then
  for _, r in ipairs(p.risks) do redis.call('ZADD', p.risk_key, num(r[2]), r[1]) end
  local first = 2 * #p.users + 2
  for n = first, #ARGV do
    redis.call('LPUSH', p.alerts_key, ARGV[n])
    redis.call('ZADD', p.outbox_key, num(p.outbox_due), ARGV[n])
  end
  if #ARGV >= first then redis.call('LTRIM', p.alerts_key, 0, p.alerts_cap - 1) end
end

-- N[i]: the batch's increments, then the stored norms of every other item a pair names.
local norms = {}
for _, n in ipairs(p.norms) do
  norms[n[1]] = tonumber(redis.call('HINCRBYFLOAT', p.norms_key, n[1], num(n[2])))
end
local unknown, asked = {}, {}
for _, entry in ipairs(p.cooc) do
  local increments = entry[2]
  for n = 1, #increments, 2 do
    local j = increments[n]
    if norms[j] == nil and not asked[j] then
      asked[j] = true
      unknown[#unknown + 1] = j
    end
  end
end
each_chunk(unknown, 1, function(first, last)
  local reply = redis.call('HMGET', p.norms_key, unpack(unknown, first, last))
  for n = 1, #reply do norms[unknown[first + n - 1]] = tonumber(reply[n] or '0') end
end)

-- Co-occurrence, and the similarity of each pair it touched. sim:i ranks i's neighbours by
-- C[i,j] / sqrt(N[j]) * C / (C + shrinkage): the cosine times sqrt(N[i]), a factor common to
-- all of i's neighbours, so i's ranking needs no rewrite when N[i] changes. It decides which
-- K neighbours i keeps; the similarity served is computed from C and N when read. The rank is
-- stored as a whole number (times rank_scale, rounded): Redis stores, compares and formats
-- integer scores far faster than other doubles (a quarter of this script's time went to
-- them), and ranks closer than 1 / rank_scale only ever decide near-ties. C[i,j] is read,
-- added to and written back in double precision, exactly as ZINCRBY would.
--
-- nbc:i follows sim:i (neighbour_counts.lua): whatever leaves sim:i (its count trimmed, or pushed out of the top K)
-- leaves nbc:i, and every re-ranked pair still kept has its count written there. (Only those:
-- most re-ranked pairs fall out of the top K at once, and every write into a small hash or
-- sorted set rewrites its listpack.)
for _, entry in ipairs(p.cooc) do
  local cooc_key = p.cooc_prefix .. entry[1]
  local sim_key = p.sim_prefix .. entry[1]
  local nbc_key = p.nbc_prefix .. entry[1]
  adopt_neighbour_counts(sim_key, cooc_key, nbc_key)
  local increments, members = entry[2], {}
  for n = 1, #increments, 2 do members[#members + 1] = increments[n] end
  local stored = read_scores(cooc_key, members)
  local counts, similarities, ranked, ranked_counts = {}, {}, {}, {}
  for n, j in ipairs(members) do
    local count = (stored[n] or 0) + increments[2 * n]
    counts[#counts + 1] = count
    counts[#counts + 1] = j
    local norm = norms[j]
    local re_ranked = norm > 0 and count > 0
    if re_ranked then
      local rank = count / math.sqrt(norm) * count / (count + p.shrinkage)
      similarities[#similarities + 1] = math.floor(rank * p.rank_scale + 0.5)
      similarities[#similarities + 1] = j
    end
    -- (A pair not re-ranked may still be kept with its old rank: its new count goes too.)
    if re_ranked or redis.call('ZSCORE', sim_key, j) then
      local k = #ranked + 1
      ranked[k], ranked_counts[k] = j, count
    end
  end
  write_scores(cooc_key, counts)
  write_scores(sim_key, similarities)
  -- A pair whose count is dropped stops being a neighbour: readers compute similarities from
  -- the counts (read_candidates.lua), so a neighbour must never outlive its count.
  local gone = trim(cooc_key, p.cooc_cap)
  each_chunk(gone, 1, function(first, last)
    redis.call('ZREM', sim_key, unpack(gone, first, last))
  end)
  for _, member in ipairs(trim(sim_key, p.k)) do gone[#gone + 1] = member end
  local is_gone, kept_counts = {}, {}
  for _, member in ipairs(gone) do is_gone[member] = true end
  for n, j in ipairs(ranked) do
    if not is_gone[j] then
      kept_counts[#kept_counts + 1] = j
      kept_counts[#kept_counts + 1] = ranked_counts[n]
    end
  end
  each_chunk(kept_counts, 2, function(first, last)
    redis.call('HSET', nbc_key, unpack(kept_counts, first, last))
  end)
  each_chunk(gone, 1, function(first, last)
    redis.call('HDEL', nbc_key, unpack(gone, first, last))
  end)
end

-- Popularity: log forward-decayed scores, merged with the stored ones by log-add-exp.
for _, entry in ipairs(p.pop) do
  local members, scores = {}, {}
  for n, e in ipairs(entry[2]) do members[n] = e[1] end
  local stored = read_scores(entry[1], members)
  for n, e in ipairs(entry[2]) do
    local score, current = e[2], stored[n]
    if current then
      local high, low = math.max(current, score), math.min(current, score)
      score = high + math.log(1 + math.exp(low - high))
    end
    scores[#scores + 1] = score
    scores[#scores + 1] = e[1]
  end
  write_scores(entry[1], scores)
end

redis.call('HINCRBY', p.stats_key, 'applied', p.applied)
redis.call('HINCRBY', p.stats_key, 'duplicates', p.duplicates)

local clock = tonumber(redis.call('GET', p.clock_key) or '-1')
if p.clock > clock then redis.call('SET', p.clock_key, num(p.clock)) end
return stale
