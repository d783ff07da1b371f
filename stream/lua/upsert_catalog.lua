-- Upsert catalog items atomically.
--
-- ARGV[1] is a JSON list of {key, item, ts, fields, in_stock}; ARGV[2] is the out-of-stock set.
-- An update older (by event time) than what is stored is ignored, so a late-arriving catalog
-- event cannot undo a newer one. Returns the number of items changed.

local items = cjson.decode(ARGV[1])
local oos_key = ARGV[2]
local changed = 0
for _, it in ipairs(items) do
  local stored = tonumber(redis.call('HGET', it.key, 'ts') or '-1')
  local ts = tonumber(it.ts)
  if ts == nil or ts >= stored then
    local args = {}
    for name, value in pairs(it.fields) do
      args[#args + 1] = name
      args[#args + 1] = value
    end
    if #args > 0 then redis.call('HSET', it.key, unpack(args)) end
    if it.in_stock == false then redis.call('SADD', oos_key, it.item) end
    if it.in_stock == true then redis.call('SREM', oos_key, it.item) end
    changed = changed + 1
  end
end
return changed
