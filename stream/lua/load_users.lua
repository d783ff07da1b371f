-- Read a batch's users, the categories of its items and a few plain strings (the served
-- model versions, the service clock) in one call: no per-key round trip, none of a client
-- pipeline's per-command work in the worker, and no small GET queued behind another batch's
-- script.
--
-- ARGV[1] is the number of users n, ARGV[2] the number of string keys h; ARGV[3 .. h + 2] the
-- string keys, then the users' state keys (hashes), then their profile keys (strings), the rest
-- item keys (hashes).
-- Returns {states, profiles, categories, strings}: states flat (version, state, ...) as HMGET
-- gives them, profiles and strings as MGET gives them, and each item's catalog category (false
-- if none).

local n, h = tonumber(ARGV[1]), tonumber(ARGV[2])
local first_state = h + 3
local first_profile = first_state + n
local first_item = first_profile + n
local strings = {}
if h > 0 then strings = redis.call('MGET', unpack(ARGV, 3, h + 2)) end
local states, profiles, categories = {}, {}, {}
for k = first_state, first_profile - 1 do
  local found = redis.call('HMGET', ARGV[k], 'v', 's')
  states[#states + 1] = found[1]
  states[#states + 1] = found[2]
end
local CHUNK = 1000 -- keys per MGET, well inside Lua's stack (a batch can hold more users)
for first = first_profile, first_item - 1, CHUNK do
  local found = redis.call('MGET', unpack(ARGV, first, math.min(first + CHUNK - 1, first_item - 1)))
  for k = 1, #found do profiles[#profiles + 1] = found[k] end
end
for k = first_item, #ARGV do
  categories[#categories + 1] = redis.call('HGET', ARGV[k], 'category')
end
return {states, profiles, categories, strings}
