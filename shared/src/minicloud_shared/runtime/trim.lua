-- minicloud: trim a stream below what every consumer group has acknowledged.
--
-- KEYS[1]: the stream. ARGV[1]: the retention floor, an entry id; entries at or above
-- it are kept whatever the groups say (keep a day for audit and replay).
-- For each group the safe bound is its oldest pending entry or, with nothing pending,
-- the entry after its last-delivered id; the stream is trimmed with MINID at the lowest
-- bound over all groups and the floor. A stream without groups is never trimmed: we
-- cannot know who still needs it. Returns {trimmed, minid} (minid "" = nothing done).
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then return {0, ''} end
local groups = redis.call('XINFO', 'GROUPS', stream)
if #groups == 0 then return {0, ''} end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end

local bound = ARGV[1]
for _, grp in ipairs(groups) do
  local info = {}
  for i = 1, #grp, 2 do info[grp[i]] = grp[i + 1] end
  local name = info['name']
  local summary = redis.call('XPENDING', stream, name)
  local candidate
  if tonumber(summary[1]) > 0 then
    candidate = summary[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    candidate = string.format('%d-%d', ms, seq + 1)
  end
  if less(candidate, bound) then bound = candidate end
end
if bound == '0-0' or bound == '0-1' then return {0, ''} end
local trimmed = redis.call('XTRIM', stream, 'MINID', bound)
return {trimmed, bound}
