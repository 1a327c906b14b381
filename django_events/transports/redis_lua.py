"""Lua scripts of the Redis Streams transport: each step that must not be seen half done.

Every script names its keys in ``KEYS``; times come from the server's ``TIME``, never
from a worker's clock. An entry's ownership is checked against the pending entries list
before a worker acts on it, so a worker whose lease was taken over cannot undo the new
owner's claim.
"""

from __future__ import annotations

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_OWNED = """
local function owned(stream, group, consumer, id)
  local ok, found = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
  return ok and #found == 1 and found[1][2] == consumer
end
"""

PUBLISH = """
-- KEYS: stream, owed. ARGV: force, then per event: event id, position, field count, fields.
-- The owed set (event id -> position) is what the group has not finished; an event
-- already owed is not added twice unless forced (recovery after a data loss).
local force = ARGV[1] == '1'
local added, i = 0, 2
while i <= #ARGV do
  local id, position, width = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fresh = redis.call('ZADD', KEYS[2], 'NX', position, id) == 1
  if fresh or force then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 3, i + 2 + width))
    added = added + 1
  end
  i = i + 3 + width
end
return {added, redis.call('XLEN', KEYS[1])}
"""

PROMOTE = (
    _NOW_MS
    + """
-- KEYS: delayed, stream. ARGV: limit. Moves retries that are due back into the stream.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(member)))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""
)

RETRY_LATER = (
    _NOW_MS
    + _OWNED
    + """
-- KEYS: stream, delayed. ARGV: group, consumer, entry id, delay ms, entry as JSON fields.
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
)

DEAD_LETTER = (
    _OWNED
    + """
-- KEYS: stream, owed. ARGV: group, consumer, entry id, event id.
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
"""
)

RELEASE = (
    _OWNED
    + """
-- KEYS: stream. ARGV: group, consumer, entry id, then the entry's fields to add again.
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
)

RENEW = (
    _OWNED
    + """
-- KEYS: stream. ARGV: group, consumer, entry ids. Resets the idle time of the entries this
-- consumer still owns (JUSTID: the delivery count, our attempt count, stays as it is).
local renewed = 0
for i = 3, #ARGV do
  if owned(KEYS[1], ARGV[1], ARGV[2], ARGV[i]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""
)

TRIM = """
-- KEYS: stream. ARGV: group. Trims what the group has acknowledged, never an entry it
-- has not read or not acknowledged: the cut is the oldest pending entry, or the first
-- entry after the last delivered one. Returns the number of entries removed, -1 if the
-- group does not exist.
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return -1 end
local last
for _, info in ipairs(groups) do
  local name, delivered
  for i = 1, #info, 2 do
    if info[i] == 'name' then name = info[i + 1] end
    if info[i] == 'last-delivered-id' then delivered = info[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
if not last then return -1 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local ms, seq = parse(last)
local cut_ms, cut_seq = ms, seq + 1
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
if summary[1] > 0 then
  local p_ms, p_seq = parse(summary[2])
  if p_ms < cut_ms or (p_ms == cut_ms and p_seq < cut_seq) then cut_ms, cut_seq = p_ms, p_seq end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d-%d', cut_ms, cut_seq))
"""

SNAPSHOT = """
-- KEYS: markers, owed. ARGV: group. One consistent read for the checkpoint: the group's
-- marker (missing after a data loss) and the lowest position it still owes.
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')}
"""
