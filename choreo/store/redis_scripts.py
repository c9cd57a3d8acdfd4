"""The Redis store's Lua scripts. Each runs atomically inside Redis: that is what makes a
barrier record and the effects it guards change together or not at all.

A batch travels as ONE MessagePack argument and comes back as one MessagePack reply
(Redis's Lua has ``cmsgpack`` built in): redis-py then packs three arguments per call
instead of a dozen per commit, and parses one reply instead of three per commit, which
was most of a service's CPU per record. Keys travel inside the argument, so the scripts
are for a single Redis (not a cluster; the effects' own keys never shared a slot with the
barrier's anyway).

An effect is ``{kind, key, a, b, c}``: ``{'incr', key, delta, minimum or '', maximum or
''}``, ``{'put', key, value, '', ''}`` or ``{'del', key, '', '', ''}``.
Errors a script raises on purpose start with ``VALUE_ERROR`` (they become ValueError).
"""

from __future__ import annotations

VALUE_ERROR = "CHOREO_VALUE"
EPOCH_ERROR = "CHOREO_EPOCH"

# Shared by the scripts. ``plan_effects`` replays effects once on a local overlay (guards
# see the running value, bad integers fail before any write); ``write_values`` then stores
# the result. They return an error message instead of raising, so one bad commit of a
# batch does not abort the script half-way through the others.
EFFECTS_LUA = """
local SAFE = 9007199254740991

local function parse_int(raw, key)
  if not raw then return 0 end
  if not string.match(raw, '^%s*[+-]?%d+%s*$') then
    return nil, 'invalid literal for int(): ' .. key .. ' holds ' .. raw
  end
  local n = tonumber(raw)
  if n == nil or n > SAFE or n < -SAFE then
    return nil, key .. ' holds ' .. raw .. ', outside the store\\'s safe integer range'
  end
  return n
end

local function plan_effects(effects)
  -- Returns values, the keys in first-touch order, a refusal {index, value seen}, and
  -- an error message.
  local values = {}
  local order = {}
  for i, effect in ipairs(effects) do
    local kind, key = effect[1], effect[2]
    if values[key] == nil then
      -- pcall: a key of another type (a list...) must make this commit INVALID, not
      -- abort the script.
      local got = redis.pcall('GET', key)
      if type(got) == 'table' and got.err then
        return nil, nil, nil, key .. ' cannot be read as a value: ' .. got.err
      end
      values[key] = got or false
      table.insert(order, key)
    end
    if kind == 'incr' then
      local raw = values[key] or nil
      local current, err = parse_int(raw, key)
      if err then return nil, nil, nil, err end
      local result = current + tonumber(effect[3])
      local minimum, maximum = effect[4], effect[5]
      if (minimum ~= '' and result < tonumber(minimum))
          or (maximum ~= '' and result > tonumber(maximum)) then
        return nil, nil, {i, raw or '0'}, nil
      end
      if result > SAFE or result < -SAFE then
        return nil, nil, nil, key .. ' would leave the store\\'s safe integer range'
      end
      values[key] = string.format('%d', result)
    elseif kind == 'put' then
      values[key] = effect[3]
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

# Reading a barrier record and its sibling (the other op of its step). A saga's records
# are fields of one hash, ``s:<step>:<op>`` (status) and ``o:<step>:<op>`` (outputs): one
# HMGET reads a record and its sibling, one HSET and one EXPIRE write a record. ``legacy``
# is the key prefix of the layout before it (a hash per record, ``<legacy><op>`` with
# ``status`` and ``outputs``), sent only while records written in it may still exist:
# a record found in neither is new.
READ_LUA = """
local function sibling_op(op)
  if op == 'action' then return 'compensate' end
  return 'action'
end

local function read_record(key, step, op, legacy)
  local own_field = step .. ':' .. op
  local got = redis.call('HMGET', key, 's:' .. own_field, 'o:' .. own_field,
    's:' .. step .. ':' .. sibling_op(op))
  local status, outputs, sibling = got[1], got[2], got[3]
  if legacy ~= '' then
    if not status then
      local old = redis.call('HMGET', legacy .. op, 'status', 'outputs')
      status, outputs = old[1], old[2]
    end
    if not sibling then
      sibling = redis.call('HGET', legacy .. sibling_op(op), 'status')
    end
  end
  return status, outputs or '', sibling
end
"""

# A batch of commits, applied in order, each as if alone (a later commit sees what an
# earlier one wrote). ARGV[1]: msgpack of {ttl, commits, epoch key, epoch}; nothing is
# written unless the epoch key still holds the epoch this client found at start. A
# commit is {saga key, step, op, legacy prefix or '', status, outputs, null_outputs,
# handler_ran (1/0), effects}. Replies msgpack of 3 strings per commit: decision, then
# for duplicate the stored outputs, for invalid the reason, for rejected the refusing
# effect's index and the value it saw. Outputs just written are not sent back: the
# caller has them.
COMMIT_MANY_LUA = (
    EFFECTS_LUA
    + READ_LUA
    + """
local batch = cmsgpack.unpack(ARGV[1])
local ttl, commits, epoch_key, epoch = batch[1], batch[2], batch[3], batch[4]
local reply = {}
if redis.call('GET', epoch_key) ~= epoch then
  return redis.error_reply('CHOREO_EPOCH the epoch key ' .. epoch_key ..
    ' no longer holds ' .. epoch .. ': the store was emptied or replaced')
end

local function commit_one(c)
  local key, step, op, legacy = c[1], c[2], c[3], c[4]
  local status, outputs, null_outputs, handler_ran = c[5], c[6], c[7], c[8]

  local function write(record_status, record_outputs)
    local field = step .. ':' .. op
    redis.call('HSET', key, 's:' .. field, record_status, 'o:' .. field, record_outputs)
    redis.call('EXPIRE', key, ttl)
  end

  local own, stored, sibling = read_record(key, step, op, legacy)
  if own then
    return 'duplicate', stored, ''
  end
  if op == 'action' then
    if sibling then
      return 'hanging', '', ''
    end
    if status == 'failed' then
      write('failed', outputs)
      return 'failed', '', ''
    end
  else
    if sibling ~= 'done' then
      write('done', null_outputs)
      return 'null_compensation', '', ''
    end
    if handler_ran ~= 1 then
      return 'run', '', ''
    end
  end
  local values, order, refusal, err = plan_effects(c[9])
  if err then
    return 'invalid', err, ''
  end
  if refusal then
    return 'rejected', tostring(refusal[1]), refusal[2]
  end
  write_values(values, order)
  write('done', outputs)
  return 'applied', '', ''
end

for _, c in ipairs(commits) do
  local decision, payload, extra = commit_one(c)
  reply[#reply + 1] = decision
  reply[#reply + 1] = payload
  reply[#reply + 1] = extra
end
return cmsgpack.pack(reply)
"""
)

# Effects outside any barrier (seeding data). ARGV[1]: msgpack of the effects.
APPLY_LUA = (
    EFFECTS_LUA
    + """
local values, order, refusal, err = plan_effects(cmsgpack.unpack(ARGV[1]))
if err then return redis.error_reply('CHOREO_VALUE ' .. err) end
if refusal then
  return {'rejected', '', tostring(refusal[1]), refusal[2]}
end
write_values(values, order)
return {'applied', ''}
"""
)

# Read-only, a batch. ARGV[1]: msgpack of {saga key, step, op, legacy prefix or ''} per
# check. Replies msgpack of 2 strings per check: decision, and for duplicate the stored
# outputs.
CHECK_MANY_LUA = (
    READ_LUA
    + """
local reply = {}
for _, check in ipairs(cmsgpack.unpack(ARGV[1])) do
  local op = check[3]
  local own, outputs, sibling = read_record(check[1], check[2], op, check[4])
  local decision = 'run'
  if own then
    decision = 'duplicate'
  else
    outputs = ''
    if op == 'action' and sibling then
      decision = 'hanging'
    elseif op == 'compensate' and sibling ~= 'done' then
      decision = 'null_compensation'
    end
  end
  reply[#reply + 1] = decision
  reply[#reply + 1] = outputs
end
return cmsgpack.pack(reply)
"""
)
