-- Read everything the recommender needs for a batch of users in one call.
--
-- ARGV[1] is a JSON document built by stream/store.py:
--   popularity, popular_n       the overall popularity sorted set and how many of its best
--   categories: [key]           per-category popularity sorted sets (popular_n best of each)
--   items: [id]                 the items whose neighbours to read
--   sim_prefix, cooc_prefix     key prefixes (ids appended) of the neighbour sets and of C
--   norms_key                   the hash of N[i]
--   out_of_stock, extra: [id]   the out-of-stock set, and candidates from elsewhere (ALS)
-- Returns {popularity, {category, ...}, {neighbours, ...}, {counts, ...}, norm_ids, norms,
-- out_of_stock}: popularity sorted sets as ZRANGE ... REV WITHSCORES gives them (member,
-- score, ...); for each item its kept neighbours j and C[i,j] now; N of every item named
-- (items and neighbours); and which of all the candidates seen are out of stock.
--
-- The similarity is computed by the reader from C and N as they are now: the score a
-- neighbour set holds was computed when the pair last changed, and N[j] may have grown since.
--
-- One script instead of a pipeline of one ZRANGE per item: the client's cost is per command,
-- and a batch reads the neighbours of hundreds of items.

local p = cjson.decode(ARGV[1])
local CHUNK = 1000 -- arguments per command, well inside Lua's stack

-- A list of distinct members, in the order first added, and the function that adds to it.
local function distinct()
  local seen, members = {}, {}
  return members, function(member)
    if not seen[member] then
      seen[member] = true
      members[#members + 1] = member
    end
  end
end
local candidates, note = distinct() -- every candidate seen, for the out-of-stock check
local norm_ids, name = distinct() -- every item whose norm the similarities need

local function best(key, count)
  local flat = redis.call('ZRANGE', key, 0, count - 1, 'REV', 'WITHSCORES')
  for n = 1, #flat, 2 do note(flat[n]) end
  return flat
end

local function chunked(command, key, ids, each)
  for first = 1, #ids, CHUNK do
    local last = math.min(first + CHUNK - 1, #ids)
    local reply = redis.call(command, key, unpack(ids, first, last))
    for n = 1, #reply do each(first + n - 1, reply[n]) end
  end
end

local popularity = best(p.popularity, p.popular_n)
local categories = {}
for n, key in ipairs(p.categories) do categories[n] = best(key, p.popular_n) end
local neighbours, counts = {}, {}
for n, item in ipairs(p.items) do
  name(item)
  local members = redis.call('ZRANGE', p.sim_prefix .. item, 0, -1)
  local found = {}
  chunked('ZMSCORE', p.cooc_prefix .. item, members, function(m, count) found[m] = count end)
  for _, member in ipairs(members) do
    note(member)
    name(member)
  end
  neighbours[n], counts[n] = members, found
end
for _, member in ipairs(p.extra) do note(member) end

local norms = {}
chunked('HMGET', p.norms_key, norm_ids, function(n, value) norms[n] = value end)
local out_of_stock = {}
chunked('SMISMEMBER', p.out_of_stock, candidates, function(n, flag)
  if flag == 1 then out_of_stock[#out_of_stock + 1] = candidates[n] end
end)
return {popularity, categories, neighbours, counts, norm_ids, norms, out_of_stock}
