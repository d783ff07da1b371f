-- Write recommendation lists, unless what they were computed from has moved on.
--
-- ARGV[1] is a JSON document built by stream/store.py:
--   current_key, accept: [version]   the lists' model must still be current ("" = no model);
--                                    without current_key the model is not checked
--   users: [[recs_key, state_key, expect]]   expect = the user's state version the list was
--                                    computed from, or -1 not to check it
-- ARGV[n + 1] is user n's list (JSON).
-- Returns {0} and writes nothing if the model moved (the caller follows it and recomputes);
-- else {1, skipped...}: the users whose state moved (a newer batch writes their list itself).

local p = cjson.decode(ARGV[1])
if p.current_key then
  local current = redis.call('GET', p.current_key) or ''
  local accepted = false
  for _, version in ipairs(p.accept) do
    if version == current then accepted = true end
  end
  if not accepted then return {0} end
end
local result = {1}
for n, u in ipairs(p.users) do
  if u[3] >= 0 and tonumber(redis.call('HGET', u[2], 'v') or '0') ~= u[3] then
    result[#result + 1] = n
  else
    redis.call('SET', u[1], ARGV[n + 1])
  end
end
return result
