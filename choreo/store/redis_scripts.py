"""The Redis store's Lua scripts. Each runs atomically inside Redis: that is what makes a
barrier record and the effects it guards change together or not at all.

Errors a script raises on purpose start with ``VALUE_ERROR`` (they become ValueError).
"""

from __future__ import annotations

VALUE_ERROR = "CHOREO_VALUE"

# Shared by both scripts. Effects come as 4 ARGV slots each (kind, a, b, c) from
# ``argv_at``; their keys as consecutive KEYS from ``keys_at``. ``plan_effects`` replays
# them once on a local overlay (guards see the running value, bad integers fail before any
# write); ``write_values`` then stores the result.
EFFECTS_LUA = """
local SAFE = 9007199254740991

local function fail(message)
  return message
end

local function parse_int(raw, key)
  if not raw then return 0 end
  if not string.match(raw, '^%s*[+-]?%d+%s*$') then
    return nil, fail('invalid literal for int(): ' .. key .. ' holds ' .. raw)
  end
  local n = tonumber(raw)
  if n == nil or n > SAFE or n < -SAFE then
    return nil, fail(key .. ' holds ' .. raw .. ', outside the store\\'s safe integer range')
  end
  return n
end

local function plan_effects(keys_at, argv_at, count)
  -- One pass on a local overlay: guards see the running value of their key (effects
  -- apply in order), and nothing is written until every effect is known to be valid.
  -- Returns values, the keys in first-touch order, and a refusal {index, value seen}.
  local values = {}
  local order = {}
  for i = 1, count do
    local base = argv_at + (i - 1) * 4
    local kind = ARGV[base]
    local key = KEYS[keys_at + i - 1]
    if values[key] == nil then
      -- pcall: a key of another type (a list...) must make this commit INVALID, not
      -- abort the script half-way through a batch.
      local got = redis.pcall('GET', key)
      if type(got) == 'table' and got.err then
        return nil, nil, nil, fail(key .. ' cannot be read as a value: ' .. got.err)
      end
      values[key] = got or false
      table.insert(order, key)
    end
    if kind == 'incr' then
      local raw = values[key] or nil
      local current, err = parse_int(raw, key)
      if err then return nil, nil, nil, err end
      local result = current + tonumber(ARGV[base + 1])
      local minimum = ARGV[base + 2]
      local maximum = ARGV[base + 3]
      if (minimum ~= '' and result < tonumber(minimum))
          or (maximum ~= '' and result > tonumber(maximum)) then
        return nil, nil, {i, raw or '0'}, nil
      end
      if result > SAFE or result < -SAFE then
        return nil, nil, nil, fail(key .. ' would leave the store\\'s safe integer range')
      end
      values[key] = string.format('%d', result)
    elseif kind == 'put' then
      values[key] = ARGV[base + 1]
    else
      values[key] = false
    end
  end
  return values, order, nil, nil
end

local function write_values(values, order)
  for _, key in ipairs(order) do
    if values[key] then
      redis.call('SET', key, values[key])
    else
      redis.call('DEL', key)
    end
  end
end
"""

# A batch of commits, applied in order, each as if alone (a later commit sees what an
# earlier one wrote). KEYS per commit: own barrier key, sibling barrier key, index key, then
# one key per effect. ARGV: ttl, commit count, then per commit: op, status, outputs,
# null_outputs, handler_ran ('1'/'0'), index member, effect count, 4 slots per effect.
# Replies 3 strings per commit: decision, then for duplicate the stored outputs, for
# invalid the reason, for rejected the refusing effect's index and the value it saw.
# Outputs just written are not sent back: the caller has them.
COMMIT_MANY_LUA = (
    EFFECTS_LUA
    + """
local ttl = ARGV[1]
local commits = tonumber(ARGV[2])
local k, a = 1, 3
local reply = {}

local function commit_one(k, a)
  local own_key, sibling_key, index_key = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local op, status, outputs, null_outputs = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local handler_ran, member = ARGV[a + 4], ARGV[a + 5]
  local count = tonumber(ARGV[a + 6])

  local function write(record_status, record_outputs)
    redis.call('HSET', own_key, 'status', record_status, 'outputs', record_outputs)
    redis.call('EXPIRE', own_key, ttl)
    redis.call('SADD', index_key, member)
    redis.call('EXPIRE', index_key, ttl)
  end

  local own = redis.call('HMGET', own_key, 'status', 'outputs')
  if own[1] then
    return {'duplicate', own[2] or '', ''}
  end
  local sibling = redis.call('HGET', sibling_key, 'status')
  if op == 'action' then
    if sibling then
      return {'hanging', '', ''}
    end
    if status == 'failed' then
      write('failed', outputs)
      return {'failed', '', ''}
    end
  else
    if sibling ~= 'done' then
      write('done', null_outputs)
      return {'null_compensation', '', ''}
    end
    if handler_ran ~= '1' then
      return {'run', '', ''}
    end
  end
  local values, order, refusal, err = plan_effects(k + 3, a + 7, count)
  if err then
    return {'invalid', err, ''}
  end
  if refusal then
    return {'rejected', tostring(refusal[1]), refusal[2]}
  end
  write_values(values, order)
  write('done', outputs)
  return {'applied', '', ''}
end

for _ = 1, commits do
  local count = tonumber(ARGV[a + 6])
  local result = commit_one(k, a)
  reply[#reply + 1] = result[1]
  reply[#reply + 1] = result[2]
  reply[#reply + 1] = result[3]
  k = k + 3 + count
  a = a + 7 + 4 * count
end
return reply
"""
)

# KEYS: one key per effect. ARGV: effect count, then 4 slots per effect.
APPLY_LUA = (
    EFFECTS_LUA
    + """
local count = tonumber(ARGV[1])
local values, order, refusal, err = plan_effects(1, 2, count)
if err then return redis.error_reply('CHOREO_VALUE ' .. err) end
if refusal then
  return {'rejected', '', tostring(refusal[1]), refusal[2]}
end
write_values(values, order)
return {'applied', ''}
"""
)

# Read-only, a batch. KEYS: own and sibling barrier key per check. ARGV: op per check.
# Replies 2 strings per check: decision, and for duplicate the stored outputs.
CHECK_MANY_LUA = """
local reply = {}
for i = 1, #ARGV do
  local op = ARGV[i]
  local own = redis.call('HMGET', KEYS[2 * i - 1], 'status', 'outputs')
  local decision, outputs = 'run', ''
  if own[1] then
    decision, outputs = 'duplicate', own[2] or ''
  else
    local sibling = redis.call('HGET', KEYS[2 * i], 'status')
    if op == 'action' and sibling then
      decision = 'hanging'
    elseif op == 'compensate' and sibling ~= 'done' then
      decision = 'null_compensation'
    end
  end
  reply[#reply + 1] = decision
  reply[#reply + 1] = outputs
end
return reply
"""
