-- minicloud: commit one message's or one batch's effects atomically.
--
-- KEYS: the keys the plan touches but the dedup keys (those are many and derived:
--       on Redis Cluster the dedup prefix carries the shard's hash tag) and the
--       source stream (another service's, reachable through the caller's ACL
--       selector for group commands only); the plan names them itself.
-- ARGV[1]: the plan, JSON (runtime/plan.py's CommitPlan, field by field):
--   stream, group   the source stream and the consumer group on it
--   pending         entry ids that must still be pending in (stream, group), sorted
--   dedup_prefix    dedup_prefix .. event id is a dedup key
--   dedup           event ids whose dedup keys must not exist; set (to the entry id)
--                   when the plan applies
--   dedup_entries   the entry ids matching dedup, position for position
--   dedup_ttl_s     dedup TTL in seconds
--   checks          [[key, expected version], ...] aggregates read or written; the
--                   version stored in field "v" (absent = 0) must still equal it
--   writes          ["put", key, version, json] | ["hincrby", key, field, n]
--                   | ["hset", key, field, value] | ["hdel", key, field]
--                   | ["sadd", key, member] | ["srem", key, member]
--                   | ["zadd", key, score, member] | ["zrem", key, member] | ["del", key]
--                   | ["srem_unchanged", key, member, guard, version, ...]: SREM
--                     only if every guard aggregate's version is still the one given
--   appends         [[stream, [field, value, ...]], ...] entries to XADD (events,
--                   dead letters)
--   ack             entry ids to XACK in (stream, group)
--   skip_ack        true = leave out the XACK (fault injection: "crash after effect,
--                   before ack")
--
-- Returns {"ok", acked} or {"refused", reason, detail...}; a refused plan wrote
-- nothing. "duplicate" and "not_pending" list every entry id concerned at once.
local plan = cjson.decode(ARGV[1])
local s, g = plan.stream, plan.group

-- 1. Checks: reads only.
-- Pending check: one ranged XPENDING over the batch's ids (plan.pending is sorted, and a
-- batch's ids are close together); per id only if the range holds too many others.
local gone = {}
local n = #plan.pending
if n > 0 then
  local limit = 4 * n + 100
  local rows = redis.call('XPENDING', s, g, plan.pending[1], plan.pending[n], limit)
  if #rows < limit then
    local pending = {}
    for _, row in ipairs(rows) do pending[row[1]] = true end
    for _, id in ipairs(plan.pending) do
      if not pending[id] then gone[#gone + 1] = id end
    end
  else
    for _, id in ipairs(plan.pending) do
      if #redis.call('XPENDING', s, g, id, id, 1) == 0 then gone[#gone + 1] = id end
    end
  end
end
if #gone > 0 then
  return {'refused', 'not_pending', unpack(gone)}
end
-- Dedup check: one EXISTS over all keys; per key only when some exist (rare).
local dkeys = {}
for i, e in ipairs(plan.dedup) do dkeys[i] = plan.dedup_prefix .. e end
if #dkeys > 0 and redis.call('EXISTS', unpack(dkeys)) > 0 then
  local dups = {}
  for i, k in ipairs(dkeys) do
    if redis.call('EXISTS', k) == 1 then dups[#dups + 1] = plan.dedup_entries[i] end
  end
  return {'refused', 'duplicate', unpack(dups)}
end
for _, kv in ipairs(plan.checks) do
  local cur = redis.call('HGET', kv[1], 'v')
  if cur == false then cur = '0' end
  if cur ~= kv[2] then
    return {'refused', 'version', kv[1]}
  end
end
local known = {put=1, hincrby=1, hset=1, hdel=1, sadd=1, srem=1, zadd=1, zrem=1, del=1, srem_unchanged=1}
for _, op in ipairs(plan.writes) do
  if known[op[1]] == nil then
    return {'refused', 'bad_op', tostring(op[1])}
  end
end

-- 2. Effects.
for _, op in ipairs(plan.writes) do
  local c = op[1]
  if c == 'put' then redis.call('HSET', op[2], 'v', op[3], 'd', op[4])
  elseif c == 'hincrby' then redis.call('HINCRBY', op[2], op[3], op[4])
  elseif c == 'hset' then redis.call('HSET', op[2], op[3], op[4])
  elseif c == 'hdel' then redis.call('HDEL', op[2], op[3])
  elseif c == 'sadd' then redis.call('SADD', op[2], op[3])
  elseif c == 'srem' then redis.call('SREM', op[2], op[3])
  elseif c == 'zadd' then redis.call('ZADD', op[2], op[3], op[4])
  elseif c == 'zrem' then redis.call('ZREM', op[2], op[3])
  elseif c == 'del' then redis.call('DEL', op[2])
  elseif c == 'srem_unchanged' then
    local same = true
    for i = 4, #op, 2 do
      local cur = redis.call('HGET', op[i], 'v')
      if cur == false then cur = '0' end
      if cur ~= op[i + 1] then same = false end
    end
    if same then redis.call('SREM', op[2], op[3]) end
  end
end
for _, x in ipairs(plan.appends) do
  redis.call('XADD', x[1], '*', unpack(x[2]))
end
for i, k in ipairs(dkeys) do
  redis.call('SET', k, plan.dedup_entries[i], 'EX', plan.dedup_ttl_s)
end
local acked = 0
if not plan.skip_ack and #plan.ack > 0 then
  acked = redis.call('XACK', s, g, unpack(plan.ack))
end
return {'ok', acked}
