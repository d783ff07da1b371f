-- Read everything the recommender needs for a batch of users in one call.
--
-- ARGV[1] is a JSON document built by stream/store.py:
--   popularity, popular_n       the overall popularity sorted set and how many of its best
--   categories: [key]           per-category popularity sorted sets (popular_n best of each)
--   items: [id]                 the items whose neighbours to read
--   sim_prefix, cooc_prefix     key prefixes (ids appended) of the neighbour sets and of C
--   norms_key                   the hash of N[i]
--   out_of_stock, extra: [id]   the out-of-stock set, and candidates from elsewhere (ALS)
-- Returns {popularity, popularity_oos, categories, categories_oos, item_norms, neighbours,
-- counts, norms, neighbours_oos, extra_oos}:
--   popularity (and each of categories) as ZRANGE ... REV WITHSCORES gives it (member, score,
--   ...), with *_oos the SMISMEMBER flags of its members in the out-of-stock set;
--   item_norms: N of each of items, in order;
--   for each of items: its kept neighbours j, C[i,j] now, N[j] now, and their out-of-stock
--   flags, each a list in the order of the neighbours;
--   extra_oos: the out-of-stock flags of extra.
--
-- The similarity is computed by the reader from C and N as they are now: the score a
-- neighbour set holds was computed when the pair last changed, and N[j] may have grown since.
--
-- Replies are returned as Redis gives them, per item: no loop over members here. A Lua loop
-- costs more per member than the commands themselves, and the reader flattens and parses the
-- lists with numpy in one pass.

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
local neighbours, counts, norms, neighbours_oos = {}, {}, {}, {}
for n, item in ipairs(p.items) do
  local members = redis.call('ZRANGE', p.sim_prefix .. item, 0, -1)
  neighbours[n] = members
  if #members > 0 then
    counts[n] = chunked('ZMSCORE', p.cooc_prefix .. item, members)
    norms[n] = chunked('HMGET', p.norms_key, members)
    neighbours_oos[n] = chunked('SMISMEMBER', p.out_of_stock, members)
  else
    counts[n], norms[n], neighbours_oos[n] = {}, {}, {}
  end
end
local extra_oos = {}
if #p.extra > 0 then extra_oos = chunked('SMISMEMBER', p.out_of_stock, p.extra) end
return {
  popularity, flags_of_flat(popularity), categories, categories_oos,
  item_norms, neighbours, counts, norms, neighbours_oos, extra_oos,
}
