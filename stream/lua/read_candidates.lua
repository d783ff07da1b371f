-- Read everything the recommender needs for a batch of users in one call.
--
-- ARGV[1] is a JSON document built by stream/store.py:
--   popularity, popular_n       the overall popularity sorted set and how many of its best
--   categories: [key]           per-category popularity sorted sets (popular_n best of each)
--   items: [id]                 the items whose neighbours to read
--   nbc_prefix                  key prefix (ids appended) of the neighbours' counts
--   sim_prefix, cooc_prefix     key prefixes of the neighbour sets and of C (neighbour_counts.lua)
--   norms_key                   the hash of N[i]
--   out_of_stock, extra: [id]   the out-of-stock set, and candidates from elsewhere (ALS)
-- Returns {popularity, popularity_oos, categories, categories_oos, item_norms, counts, others,
-- other_norms, others_oos, extra_oos}:
--   popularity (and each of categories) as ZRANGE ... REV WITHSCORES gives it (member, score,
--   ...), with *_oos the SMISMEMBER flags of its members in the out-of-stock set;
--   item_norms: N of each of items, in order;
--   counts: for each of items, its kept neighbours j and C[i,j] now (at, C, at, C, ...), j
--   given by its position in others (from 1) and C as a whole number when it is one, as
--   HGETALL's text otherwise;
--   others: every neighbour of those once, with other_norms (N[j] now) and others_oos (its
--   out-of-stock flag) in the same order;
--   extra_oos: the out-of-stock flags of extra.
--
-- The similarity is computed by the reader from C and N as they are now: the score a
-- neighbour set holds was computed when the pair last changed, and N[j] may have grown since.
--
-- Every element a script handles or returns costs more than the commands' own work, so each
-- neighbour's id, norm and stock flag are returned once per batch, however many of the
-- batch's items keep it; a pair names its neighbour by position. Whole counts (every count,
-- with the default event weights) go back as integers, which the reader takes in at a
-- fraction of the cost of parsing text; a count that is not whole stays text.

local p = cjson.decode(ARGV[1])
local CHUNK = 1000 -- arguments per command, well inside Lua's stack

-- One command per chunk of ids; the replies concatenated in order.
local function chunked(command, key, ids)
  if #ids <= CHUNK then return redis.call(command, key, unpack(ids)) end
  local all = {}
  for first = 1, #ids, CHUNK do
    local reply = redis.call(command, key, unpack(ids, first, math.min(first + CHUNK - 1, #ids)))
    for n = 1, #reply do all[#all + 1] = reply[n] end
  end
  return all
end

-- A count as a Lua number if it is whole (Redis replies with an integer), else its text.
local WHOLE_LIMIT = 2 ^ 53 -- every whole number up to here is exact in a double
local function whole(text)
  local x = tonumber(text)
  if x and x == math.floor(x) and math.abs(x) < WHOLE_LIMIT then return x end
  return text
end

-- Out-of-stock flags of the members of a flat member, score, ... list.
local function flags_of_flat(flat)
  local members = {}
  for n = 1, #flat, 2 do members[#members + 1] = flat[n] end
  if #members == 0 then return {} end
  return chunked('SMISMEMBER', p.out_of_stock, members)
end

local popularity = redis.call('ZRANGE', p.popularity, 0, p.popular_n - 1, 'REV', 'WITHSCORES')
local categories, categories_oos = {}, {}
for n, key in ipairs(p.categories) do
  categories[n] = redis.call('ZRANGE', key, 0, p.popular_n - 1, 'REV', 'WITHSCORES')
  categories_oos[n] = flags_of_flat(categories[n])
end

local item_norms = {}
if #p.items > 0 then item_norms = chunked('HMGET', p.norms_key, p.items) end
local counts, others, seen = {}, {}, {}
for n, item in ipairs(p.items) do
  local nbc_key = p.nbc_prefix .. item
  local flat = redis.call('HGETALL', nbc_key)
  if #flat == 0 then
    adopt_neighbour_counts(p.sim_prefix .. item, p.cooc_prefix .. item, nbc_key)
    flat = redis.call('HGETALL', nbc_key)
  end
  for k = 1, #flat, 2 do
    local j = flat[k]
    local at = seen[j]
    if not at then
      at = #others + 1
      seen[j] = at
      others[at] = j
    end
    flat[k] = at
    flat[k + 1] = whole(flat[k + 1])
  end
  counts[n] = flat
end
local other_norms, others_oos, extra_oos = {}, {}, {}
if #others > 0 then
  other_norms = chunked('HMGET', p.norms_key, others)
  others_oos = chunked('SMISMEMBER', p.out_of_stock, others)
end
if #p.extra > 0 then extra_oos = chunked('SMISMEMBER', p.out_of_stock, p.extra) end
return {
  popularity, flags_of_flat(popularity), categories, categories_oos,
  item_norms, counts, others, other_norms, others_oos, extra_oos,
}
