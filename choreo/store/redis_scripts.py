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
  return redis.error_reply('CHOREO_VALUE ' .. message)
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
      values[key] = redis.call('GET', key) or false
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

# KEYS: own barrier key, sibling barrier key, index key, then one key per effect.
# ARGV: op, status, outputs, null_outputs, handler_ran ('1'/'0'), ttl, index member,
# effect count, then 4 slots per effect.
COMMIT_LUA = (
    EFFECTS_LUA
    + """
local op, status, outputs, null_outputs = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local handler_ran, ttl, member = ARGV[5], ARGV[6], ARGV[7]
local count = tonumber(ARGV[8])

local function write(record_status, record_outputs)
  redis.call('HSET', KEYS[1], 'status', record_status, 'outputs', record_outputs)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('SADD', KEYS[3], member)
  redis.call('EXPIRE', KEYS[3], ttl)
end

local own = redis.call('HMGET', KEYS[1], 'status', 'outputs')
if own[1] then
  return {'duplicate', own[2] or ''}
end
local sibling = redis.call('HGET', KEYS[2], 'status')
if op == 'action' then
  if sibling then
    return {'hanging', ''}
  end
  if status == 'failed' then
    write('failed', outputs)
    return {'failed', outputs}
  end
else
  if sibling ~= 'done' then
    write('done', null_outputs)
    return {'null_compensation', null_outputs}
  end
  if handler_ran ~= '1' then
    return {'run', ''}
  end
end
local values, order, refusal, err = plan_effects(4, 9, count)
if err then return err end
if refusal then
  return {'rejected', '', tostring(refusal[1]), refusal[2]}
end
write_values(values, order)
write('done', outputs)
return {'applied', outputs}
"""
)

# KEYS: one key per effect. ARGV: effect count, then 4 slots per effect.
APPLY_LUA = (
    EFFECTS_LUA
    + """
local count = tonumber(ARGV[1])
local values, order, refusal, err = plan_effects(1, 2, count)
if err then return err end
if refusal then
  return {'rejected', '', tostring(refusal[1]), refusal[2]}
end
write_values(values, order)
return {'applied', ''}
"""
)

# Read-only. KEYS: own barrier key, sibling barrier key. ARGV: op.
CHECK_LUA = """
local own = redis.call('HMGET', KEYS[1], 'status', 'outputs')
if own[1] then
  return {'duplicate', own[2] or ''}
end
local sibling = redis.call('HGET', KEYS[2], 'status')
if ARGV[1] == 'action' and sibling then
  return {'hanging', ''}
end
if ARGV[1] == 'compensate' and sibling ~= 'done' then
  return {'null_compensation', ''}
end
return {'run', ''}
"""
