"""The Redis store: the barrier's rules in one Lua script per call, so the re-check, the
guards, the effects and the record change together or not at all.

Layout (``prefix`` defaults to ``choreo``; the gid is a hash tag, so a saga's barrier keys
share a cluster slot):

- ``{prefix}:barrier:{<gid>}:<step>:<op>``: a hash with ``status`` and ``outputs``,
  expiring after ``retention_seconds``.
- ``{prefix}:barrier-index:{<gid>}``: a set of ``<step>:<op>`` members naming the saga's
  records, so ``records(gid)`` needs no SCAN; its expiry is refreshed on every write.
- user data keys are used exactly as the handler names them (no prefix, no expiry).

Counters are computed by Lua, whose numbers are doubles: every value, delta and bound an
``Incr`` touches must stay within +-(2**53 - 1), or the call raises ``ValueError`` with
nothing written. A value that is not an integer also raises ``ValueError``, as in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from choreo.errors import ConfigurationError, TransportError
from choreo.store.base import (
    DEFAULT_RETENTION_SECONDS,
    BarrierKey,
    BarrierOp,
    BarrierRecord,
    BarrierResult,
    Decision,
    Delete,
    Effect,
    Incr,
    Put,
    Status,
    Store,
    guard_failure,
)

CONNECT_TIMEOUT_SECONDS = 5.0
_SAFE_INTEGER = 2**53 - 1
# Scripts signal a value they cannot do arithmetic on with this prefix; it becomes ValueError.
_VALUE_ERROR = "CHOREO_VALUE"

# Shared by both scripts. Effects come as 4 ARGV slots each (kind, a, b, c) from
# ``argv_at``; their keys as consecutive KEYS from ``keys_at``. ``plan_effects`` replays
# them once on a local overlay (guards see the running value, bad integers fail before any
# write); ``write_values`` then stores the result.
_EFFECTS_LUA = """
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
_COMMIT_LUA = (
    _EFFECTS_LUA
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
_APPLY_LUA = (
    _EFFECTS_LUA
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
_CHECK_LUA = """
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


def _sibling_op(op: BarrierOp) -> BarrierOp:
    return "compensate" if op == "action" else "action"


def _encode_effects(effects: Sequence[Effect]) -> tuple[list[str], list[str | int]]:
    keys: list[str] = []
    args: list[str | int] = []
    for effect in effects:
        keys.append(effect.key)
        if isinstance(effect, Incr):
            for number in (effect.delta, effect.minimum, effect.maximum):
                if number is not None and abs(number) > _SAFE_INTEGER:
                    raise ValueError(
                        f"{effect.key}: {number} is outside the store's safe integer range"
                    )
            args += [
                "incr",
                effect.delta,
                "" if effect.minimum is None else effect.minimum,
                "" if effect.maximum is None else effect.maximum,
            ]
        elif isinstance(effect, Put):
            args += ["put", effect.value, "", ""]
        elif isinstance(effect, Delete):
            args += ["del", "", "", ""]
        else:  # pragma: no cover - Effect is a closed union
            raise TypeError(f"unknown effect {effect!r}")
    return keys, args


@contextmanager
def _store_errors(url: str) -> Iterator[None]:
    """Redis's connection trouble becomes TransportError (retriable); a script's refusal
    to do arithmetic on a non-integer becomes ValueError, as ``int()`` raises in memory."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise TransportError(f"redis store {url} did not answer: {exc}") from exc
    except ResponseError as exc:
        message = str(exc)
        if _VALUE_ERROR in message:
            raise ValueError(message.split(_VALUE_ERROR, 1)[1].strip()) from exc
        raise


class RedisStore(Store):
    def __init__(
        self,
        url: str,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        key_prefix: str = "choreo",
    ) -> None:
        if retention_seconds < 1:
            raise ConfigurationError("retention_seconds must be at least 1 on Redis")
        self.url = url
        self.retention_seconds = retention_seconds
        self.key_prefix = key_prefix
        self._redis: aioredis.Redis | None = None
        self._commit_script: AsyncScript | None = None
        self._apply_script: AsyncScript | None = None
        self._check_script: AsyncScript | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._redis is not None:
            return
        client = aioredis.from_url(
            self.url, decode_responses=False, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        try:
            await client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await client.aclose()
            raise TransportError(f"cannot reach the redis store at {self.url}: {exc}") from exc
        except BaseException:
            await client.aclose()
            raise
        self._redis = client
        self._commit_script = client.register_script(_COMMIT_LUA)
        self._apply_script = client.register_script(_APPLY_LUA)
        self._check_script = client.register_script(_CHECK_LUA)

    async def stop(self) -> None:
        client, self._redis = self._redis, None
        self._commit_script = self._apply_script = self._check_script = None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        """The underlying redis-py client (for tests and tooling)."""
        if self._redis is None:
            raise ConfigurationError("RedisStore used before start()")
        return self._redis

    @staticmethod
    def _script(script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise ConfigurationError("RedisStore used before start()")
        return script

    # -- keys ------------------------------------------------------------------------

    def barrier_key(self, key: BarrierKey) -> str:
        return f"{self.key_prefix}:barrier:{{{key.gid}}}:{key.step}:{key.op}"

    def index_key(self, gid: str) -> str:
        return f"{self.key_prefix}:barrier-index:{{{gid}}}"

    def _sibling_key(self, key: BarrierKey) -> str:
        return self.barrier_key(BarrierKey(key.gid, key.step, _sibling_op(key.op)))

    # -- barrier ---------------------------------------------------------------------

    async def check(self, key: BarrierKey) -> BarrierResult:
        script = self._script(self._check_script)
        with _store_errors(self.url):
            reply = await script(
                keys=[self.barrier_key(key), self._sibling_key(key)], args=[key.op]
            )
        decision, outputs = _reply(reply)[:2]
        return BarrierResult(Decision(decision.decode()), outputs)

    async def commit(
        self,
        key: BarrierKey,
        *,
        status: Status,
        outputs: bytes,
        effects: Sequence[Effect],
        null_outputs: bytes,
        handler_ran: bool,
    ) -> BarrierResult:
        script = self._script(self._commit_script)
        effect_keys, effect_args = _encode_effects(effects)
        keys = [self.barrier_key(key), self._sibling_key(key), self.index_key(key.gid)]
        args: list[str | int | bytes] = [
            key.op,
            status,
            outputs,
            null_outputs,
            "1" if handler_ran else "0",
            self.retention_seconds,
            f"{key.step}:{key.op}",
            len(effects),
            *effect_args,
        ]
        with _store_errors(self.url):
            reply = _reply(await script(keys=keys + effect_keys, args=args))
        decision = Decision(reply[0].decode())
        if decision is Decision.REJECTED:
            return BarrierResult(decision, detail=_refusal(effects, reply))
        return BarrierResult(decision, reply[1])

    async def records(self, gid: str) -> list[BarrierRecord]:
        with _store_errors(self.url):
            members = await self.client.smembers(self.index_key(gid))
            keys: list[BarrierKey] = []
            for member in members:
                step, _, op = _text(member).rpartition(":")
                if op in ("action", "compensate"):
                    keys.append(BarrierKey(gid, step, "action" if op == "action" else "compensate"))
            keys.sort(key=lambda k: (k.step, k.op))
            async with self.client.pipeline(transaction=True) as pipe:
                for barrier in keys:
                    pipe.hmget(self.barrier_key(barrier), ["status", "outputs"])
                replies: list[list[bytes | None]] = await pipe.execute()
        found: list[BarrierRecord] = []
        for barrier, (status, outputs) in zip(keys, replies, strict=True):
            if status is None:
                continue  # expired; the index outlives its records
            found.append(
                BarrierRecord(barrier, "failed" if status == b"failed" else "done", outputs or b"")
            )
        return found

    # -- data ------------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        with _store_errors(self.url):
            value = await self.client.get(key)
        return None if value is None else _text(value)

    async def apply(self, effects: Sequence[Effect]) -> str:
        script = self._script(self._apply_script)
        keys, args = _encode_effects(effects)
        with _store_errors(self.url):
            reply = _reply(await script(keys=keys, args=[len(effects), *args]))
        if reply[0] == b"rejected":
            return _refusal(effects, reply)
        return ""


def _text(value: bytes | str) -> str:
    # decode_responses is off, so redis-py hands back bytes; its types also allow str.
    return value if isinstance(value, str) else value.decode()


def _reply(reply: Any) -> list[bytes]:
    """A script's reply: a list of bulk strings (decode_responses is off)."""
    if not isinstance(reply, list) or not all(isinstance(part, bytes) for part in reply):
        raise TransportError(f"unexpected reply from a choreo redis script: {reply!r}")
    return reply


def _refusal(effects: Sequence[Effect], reply: list[bytes]) -> str:
    """The refusing Incr's text, formatted exactly as memory formats it."""
    effect = effects[int(reply[2]) - 1]
    assert isinstance(effect, Incr)
    return guard_failure(effect, int(reply[3]))
