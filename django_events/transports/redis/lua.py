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
-- A claim is "<entry id>/<delivery count>": the count tells this claim from a later one
-- by the same consumer after its lease ran out.
local function owned(stream, group, consumer, claim)
  local id, count = string.match(claim, '^(.+)/(%d+)$')
  local ok, found = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
  local mine = ok and #found == 1 and found[1][2] == consumer and found[1][4] == tonumber(count)
  return mine, id
end
"""

_HELD = """
-- Which claims ("<entry id>/<delivery count>", in ARGV[from], ARGV[from + step], ...)
-- ``consumer`` still holds under the same delivery count, read with one XPENDING over its
-- own pending entries between the claims' lowest and highest id (paged, should it hold
-- others in between) rather than one XPENDING per claim. Returns the claims' entry ids
-- (false for a malformed claim), their delivery counts, how many, and the delivery count
-- each entry this consumer holds has now.
local function later(ms, seq, than_ms, than_seq)  -- ids compared exactly, as numbers
  if #ms ~= #than_ms then return #ms > #than_ms end
  if ms ~= than_ms then return ms > than_ms end
  if #seq ~= #than_seq then return #seq > #than_seq end
  return seq > than_seq
end
local function held(stream, group, consumer, from, step)
  local ids, counts, now, n = {}, {}, {}, 0
  local low, low_ms, low_seq, high, high_ms, high_seq
  for i = from, #ARGV, step do
    local id, ms, seq, count = string.match(ARGV[i], '^((%d+)-(%d+))/(%d+)$')
    n = n + 1
    ids[n], counts[n] = id or false, tonumber(count)
    if id and (not low or later(low_ms, low_seq, ms, seq)) then
      low, low_ms, low_seq = id, ms, seq
    end
    if id and (not high or later(ms, seq, high_ms, high_seq)) then
      high, high_ms, high_seq = id, ms, seq
    end
  end
  local start = low
  while start do
    local ok, found = pcall(redis.call, 'XPENDING', stream, group, start, high, n, consumer)
    if not ok then break end  -- no such stream or group: nothing is held
    for _, p in ipairs(found) do now[p[1]] = p[4] end
    start = #found == n and '(' .. found[n][1] or nil
  end
  return ids, counts, n, now
end
"""

_GUARD = """
-- A side key of the wrong type (written by something else) is set aside, renamed with a
-- ':garbled:<ms>' suffix for inspection, rather than failing every call that touches it.
local function guard(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= kind and found ~= 'none' then
    local t = redis.call('TIME')
    redis.call('RENAME', key, key .. ':garbled:' .. t[1] .. t[2])
    return 1
  end
  return 0
end
"""

REPAIR = (
    _GUARD
    + """
-- KEYS: any. ARGV: the type each key must have. Returns how many were set aside.
local renamed = 0
for i = 1, #KEYS do renamed = renamed + guard(KEYS[i], ARGV[i]) end
return renamed
"""
)

PUBLISH = (
    _GUARD
    + """
-- KEYS: stream, owed. ARGV: force, then per event: event id, position, field count, fields.
-- The owed set (event id -> position) is what the group has not finished; an event
-- already owed is not added twice unless forced (recovery after a data loss).
local force = ARGV[1] == '1'
guard(KEYS[1], 'stream')
guard(KEYS[2], 'zset')
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
)

PROMOTE = (
    _NOW_MS
    + _GUARD
    + """
-- KEYS: delayed, stream. ARGV: limit. Moves retries that are due back into the stream.
-- A member this transport did not write (anything but a JSON array of an even number of
-- strings) moves too, as an entry with a 'problem' field: the worker dead-letters it.
-- Returns the members moved and how many of them were not ours.
guard(KEYS[1], 'zset')
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
local strange = 0
for _, member in ipairs(due) do
  local ok, fields = pcall(cjson.decode, member)
  local valid = ok and type(fields) == 'table' and #fields >= 2 and #fields % 2 == 0
    and #fields <= 200
  if valid then
    for i = 1, #fields do
      if type(fields[i]) ~= 'string' then valid = false end
    end
  end
  if valid then
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  else
    redis.call('XADD', KEYS[2], '*', 'problem',
      'A member of the delayed-retry set that django-events did not write', 'member', member)
    strange = strange + 1
  end
  redis.call('ZREM', KEYS[1], member)
end
return {#due, strange}
"""
)

RETRY_LATER = (
    _NOW_MS
    + _OWNED
    + _GUARD
    + """
-- KEYS: stream, delayed. ARGV: group, consumer, claim, delay ms, entry as JSON fields.
local mine, id = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if not mine then return 0 end
guard(KEYS[2], 'zset')
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], id)
return 1
"""
)

DEAD_LETTER = (
    _OWNED
    + _GUARD
    + """
-- KEYS: stream, owed. ARGV: group, consumer, claim, event id.
local mine, id = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if not mine then return 0 end
guard(KEYS[2], 'zset')
redis.call('XACK', KEYS[1], ARGV[1], id)
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
"""
)

RELEASE = (
    _OWNED
    + """
-- KEYS: stream. ARGV: group, consumer, claim, then the entry's fields to add again.
local mine, id = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if not mine then return 0 end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], id)
return 1
"""
)

RENEW = (
    _NOW_MS
    + _HELD
    + _GUARD
    + """
-- KEYS: stream, leases. ARGV: group, consumer, lease ms, claims. Resets the idle time of
-- the entries this consumer still holds under the claim's delivery count (JUSTID: the
-- delivery count, our attempt count, stays as it is) and notes until when they are held,
-- should that outlast the idle time. One XPENDING, XCLAIM and HSET per 500 entries.
local ids, counts, n, now = held(KEYS[1], ARGV[1], ARGV[2], 4, 1)
local held_until, renewed, seen = now_ms() + tonumber(ARGV[3]), 0, {}
local claim, leases = {}, {}
guard(KEYS[2], 'hash')
local function flush()
  if #leases == 0 then return end
  table.insert(claim, 'JUSTID')
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(claim))
  redis.call('HSET', KEYS[2], unpack(leases))
  claim, leases = {}, {}
end
for i = 1, n do
  local id = ids[i]
  if id and now[id] == counts[i] and not seen[id] then
    seen[id] = true
    table.insert(claim, id)
    table.insert(leases, id)
    table.insert(leases, held_until)
    renewed = renewed + 1
    if #claim == 500 then flush() end
  end
end
flush()
return renewed
"""
)

TAKE_OVER = (
    _NOW_MS
    + _GUARD
    + """
-- KEYS: stream, leases. ARGV: group, consumer, min idle ms, count, cursor. Claims entries
-- idle at least min idle whose renewed lease (if any) has run out. Returns the next cursor
-- and {id, fields, delivery count} per entry taken.
local now = now_ms()
guard(KEYS[2], 'hash')
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], ARGV[5], '+', ARGV[4])
local taken, cursor = {}, '-'
for _, p in ipairs(pending) do
  local held_until = tonumber(redis.call('HGET', KEYS[2], p[1]) or '0') or 0
  if held_until <= now then
    local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])
    redis.call('HDEL', KEYS[2], p[1])
    if #got > 0 and got[1] then table.insert(taken, {got[1][1], got[1][2], p[4] + 1}) end
  end
end
if #pending == tonumber(ARGV[4]) then cursor = '(' .. pending[#pending][1] end
return {cursor, taken}
"""
)

ACK = (
    _HELD
    + _GUARD
    + """
-- KEYS: stream, owed, leases. ARGV: group, consumer, then per entry: claim, event id.
-- Acknowledges the entries this consumer still holds under the claim's delivery count
-- (docs/internals.md, "Redis: acks in one script"); returns the positions, in ARGV
-- order, of the claims it does not hold (lost to a takeover, or named twice): usually
-- none, so the reply stays one empty array. One XACK, ZREM and HDEL per 500 entries.
local ids, counts, n, now = held(KEYS[1], ARGV[1], ARGV[2], 3, 2)
local lost, acked, events, seen = {}, {}, {}, {}
guard(KEYS[2], 'zset')
guard(KEYS[3], 'hash')
local function flush()
  if #acked == 0 then return end
  redis.call('XACK', KEYS[1], ARGV[1], unpack(acked))
  redis.call('ZREM', KEYS[2], unpack(events))
  redis.call('HDEL', KEYS[3], unpack(acked))
  acked, events = {}, {}
end
for i = 1, n do
  local id = ids[i]
  if id and now[id] == counts[i] and not seen[id] then
    seen[id] = true
    acked[#acked + 1], events[#events + 1] = id, ARGV[2 + 2 * i]
    if #acked == 500 then flush() end
  else
    lost[#lost + 1] = i
  end
end
flush()
return lost
"""
)

TRIM = (
    _GUARD
    + """
-- KEYS: stream, leases. ARGV: group. Trims what the group has acknowledged, never an entry
-- it has not read or not acknowledged: the cut is the oldest pending entry, or the first
-- entry after the last delivered one. Forgets renewed leases of entries no longer pending
-- (retried or dead-lettered after a renewal). Returns the number of entries removed, -1
-- if the group does not exist.
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
guard(KEYS[2], 'hash')
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  local ok, found = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if not ok or #found == 0 then redis.call('HDEL', KEYS[2], id) end  -- not an entry id
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
)

SNAPSHOT = (
    _GUARD
    + """
-- KEYS: owed. ARGV: this publisher's marker. One consistent read for the checkpoint: whether
-- the marker is there (missing after a data loss; other publishers' markers sit beside it)
-- and the owed set's lowest member, with its position.
guard(KEYS[1], 'zset')
local marked = redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= false
return {marked and 1 or false, redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')}
"""
)
