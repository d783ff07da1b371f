-- Read a batch's users and the categories of its items in one call (no per-key round trip,
-- and none of a client pipeline's per-command work in the worker).
--
-- ARGV[1] is the number of users n; ARGV[2 .. n + 1] their state keys (hashes), ARGV[n + 2 ..
-- 2n + 1] their profile keys (strings), the rest item keys (hashes).
-- Returns {states, profiles, categories}: states flat (version, state, ...) as HMGET gives
-- them, profiles as MGET gives them, and each item's catalog category (false if none).

local n = tonumber(ARGV[1])
local states, profiles, categories = {}, {}, {}
for k = 2, n + 1 do
  local found = redis.call('HMGET', ARGV[k], 'v', 's')
  states[#states + 1] = found[1]
  states[#states + 1] = found[2]
end
local CHUNK = 1000 -- keys per MGET, well inside Lua's stack (a batch can hold more users)
for first = n + 2, 2 * n + 1, CHUNK do
  local found = redis.call('MGET', unpack(ARGV, first, math.min(first + CHUNK - 1, 2 * n + 1)))
  for k = 1, #found do profiles[#profiles + 1] = found[k] end
end
for k = 2 * n + 2, #ARGV do
  categories[#categories + 1] = redis.call('HGET', ARGV[k], 'category')
end
return {states, profiles, categories}
