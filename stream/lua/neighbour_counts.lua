-- Shared by commit_batch.lua and read_candidates.lua: stream/store.py puts it before each.
--
-- nbc:i holds C[i,j] of exactly the neighbours j that sim:i keeps (a hash), so a read gets a
-- neighbour and its count in one command instead of a lookup per neighbour in cooc:i. State
-- written before nbc:i existed has sim:i and cooc:i only: the first script that touches such
-- an item fills its nbc:i from them, so an upgrade needs no migration step.

local NBC_CHUNK = 1000 -- members per command, well inside Lua's stack

local function adopt_neighbour_counts(sim_key, cooc_key, nbc_key)
  if redis.call('EXISTS', nbc_key) == 1 then return end
  local members = redis.call('ZRANGE', sim_key, 0, -1)
  for first = 1, #members, NBC_CHUNK do
    local last = math.min(first + NBC_CHUNK - 1, #members)
    local counts = redis.call('ZMSCORE', cooc_key, unpack(members, first, last))
    local flat = {}
    for n = 1, #counts do
      if counts[n] then
        flat[#flat + 1] = members[first + n - 1]
        flat[#flat + 1] = counts[n]
      end
    end
    if #flat > 0 then redis.call('HSET', nbc_key, unpack(flat)) end
  end
end
