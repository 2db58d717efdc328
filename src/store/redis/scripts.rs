//! The Lua scripts, one per store operation, each run atomically on one key's hash (the
//! fields are described in the parent module). Every script starts with the same prelude.

use redis::Script;

pub(super) struct Scripts {
    pub(super) load: Script,
    pub(super) learn: Script,
    pub(super) acquire: Script,
    pub(super) complete: Script,
    pub(super) purge: Script,
}

/// Shared by every script: the server clock, the hash read once (`HMGET`) into `h`, settling
/// of lapsed leases and expired states, generations, and the hash written back once by
/// `flush` (one `HSET`, one `HDEL` of cleared fields, and, when the hash must live longer, one
/// `PEXPIREAT`, each only if needed). `ARGV[1]` is always the state TTL in ms.
///
/// Each `redis.call` costs Redis one to two microseconds of its own here, most of a script's
/// time on one small hash, so they are few: a trusted state's expiry and the hash's own are
/// moved only once they fell a sixteenth of the TTL behind, so a GET that confirms what is
/// known writes nothing. The fields are those the previous release's scripts use, plus `k`
/// (which they ignore), so replicas of both can share one Redis during a rolling upgrade.
const PRELUDE: &str = r#"
pcall(redis.replicate_commands) -- Redis < 5: TIME before writes needs effects replication
local k = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local slack = math.floor(ttl / 16)
local r = redis.call('HMGET', k, 'g', 's', 'v', 'm', 'e', 'l', 'x', 'k')
local h = {g = r[1], s = r[2], v = r[3], m = r[4], e = r[5], l = r[6], x = r[7], k = r[8]}
local changed = {}
-- Every hash the scripts make has a generation.
local exists = h.g ~= false
local function put(name, value) h[name] = value; changed[name] = true end
local function num(name) return tonumber(h[name] or '0') end
-- A new hash starts from the clock in µs, so a key that expired and came back never reuses
-- a generation (nor, with it, a stale reader's). Exact: µs clocks stay far below 2^53.
local function bump()
  if not h.g then
    put('g', t[1] .. string.format('%06d', tonumber(t[2])))
  else
    put('g', string.format('%.0f', tonumber(h.g) + 1))
  end
end
local function set(s, v, m)
  put('s', s)
  if s == 'p' then
    put('v', v)
    put('m', (m and m ~= '') and m or false)
  else
    put('v', false)
    put('m', false)
  end
end
-- What time decided: a lapsed lease means a write of unknown outcome (new generation, so no
-- read that started before it can record); an expired state is no longer trusted.
local function settle()
  if h.x and tonumber(h.x) <= now then
    put('l', false)
    put('x', false)
    set('u')
    bump()
  end
  if not h.e or tonumber(h.e) <= now then
    if h.s ~= 'u' then set('u') end
  end
end
local function view()
  if not h.e or tonumber(h.e) <= now then return 'u', '', '' end
  return h.s or 'u', h.v or '', h.m or ''
end
-- Trusted for the TTL from now (at least 15/16 of it, between two refreshes).
local function trust()
  if num('e') < now + ttl - slack then put('e', string.format('%d', now + ttl)) end
end
-- The hash outlives what it holds by a TTL (at least 15/16 of one): long enough that no read
-- straddles its removal.
local function keep()
  local last = math.max(num('e'), num('x'), now) + ttl
  if num('k') < last - slack then put('k', string.format('%d', last)) end
end
local function flush()
  local args, gone = {}, {}
  for name in pairs(changed) do
    if h[name] then
      args[#args + 1] = name
      args[#args + 1] = h[name]
    else
      gone[#gone + 1] = name
    end
  end
  if #args > 0 then redis.call('HSET', k, unpack(args)) end
  if #gone > 0 then redis.call('HDEL', k, unpack(gone)) end
  if changed.k then redis.call('PEXPIREAT', k, h.k) end
end
"#;

/// -> {generation, state, validators, last_modified, leased}
const LOAD: &str = r#"
if not exists then return {'0', 'u', '', '', '0'} end
settle()
flush()
local s, v, m = view()
return {h.g, s, v, m, h.l and '1' or '0'}
"#;

/// ARGV: ttl, generation, kind (v|a|u), representation, opaque, last_modified
/// -> {recorded (1|0), the generation after}
const LEARN: &str = r#"
local gen, kind, rep, tag, lm = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local s, v, m = 'u', '', ''
if not exists then
  if gen ~= '0' or kind == 'u' then return {gen == '0' and '1' or '0', '0'} end
else
  settle()
  if h.g ~= gen then
    flush()
    return {'0', h.g}
  end
  s, v, m = view()
end
local ns, nv
if kind == 'u' then
  if s ~= 'u' then ns = 'u' end
elseif kind == 'a' then
  if s ~= 'a' then ns = 'a' end
else
  local rec = rep .. tag .. '\n'
  ns, nv = 'p', rec
  if s == 'p' then
    local found, count = nil, 0
    for r in string.gmatch(v, '[^\n]*\n') do
      count = count + 1
      if string.sub(r, 1, 16) == rep then found = r end
    end
    if found == rec then
      -- The same validator: a change only if Last-Modified moved.
      if m == lm then ns = nil else nv = v end
    elseif not found and count < 4 then
      nv = v .. rec
    end
  end
end
if ns then
  set(ns, nv, lm)
  bump()
end
trust()
keep()
flush()
return {'1', h.g}
"#;

/// ARGV: ttl, lease ms, lease id, refusal (''|m|*|n), variant (8 hex), tags...
/// -> {'0'} held by another, {'1', generation, state, validators, lm} taken, or
/// {'2', generation, state, validators, lm} refused: no lease is held and the state shows the
/// precondition fails (`m` If-Match with these tags, `*` If-Match: *, `n` If-None-Match: *),
/// so none is taken and nothing changes.
const ACQUIRE: &str = r#"
if exists then
  settle()
  if h.l then
    flush()
    return {'0'}
  end
  local refusal = ARGV[4]
  if refusal ~= '' then
    local s, v, m = view()
    local refused = false
    if s == 'p' then
      local of_variant, matched = false, false
      for rec in string.gmatch(v, '[^\n]*\n') do
        if string.sub(rec, 1, 8) == ARGV[5] then
          of_variant = true
          local tag = string.sub(rec, 17, -2)
          for i = 6, #ARGV do
            if ARGV[i] == tag then matched = true end
          end
        end
      end
      refused = of_variant and (refusal == 'n' or (refusal == 'm' and not matched))
    elseif s == 'a' then
      refused = ARGV[5] == '00000000' and refusal ~= 'n'
    end
    if refused then
      flush()
      return {'2', h.g, s, v, m}
    end
  end
end
put('l', ARGV[3])
put('x', string.format('%d', now + tonumber(ARGV[2])))
bump()
local s, v, m = view()
keep()
flush()
return {'1', h.g, s, v, m}
"#;

/// ARGV: ttl, lease id, kind (r|d|u|n), representation, opaque, last_modified
/// -> {recorded (1), or ignored (0: not the holder, or the lease lapsed), the generation after}
const COMPLETE: &str = r#"
if h.l ~= ARGV[2] then return {'0', h.g or '0'} end
if num('x') <= now then
  settle()
  keep()
  flush()
  return {'0', h.g}
end
settle()
put('l', false)
put('x', false)
local kind = ARGV[3]
if kind == 'r' then
  set('p', ARGV[4] .. ARGV[5] .. '\n', ARGV[6])
  trust()
elseif kind == 'd' then
  set('a')
  trust()
elseif kind == 'u' then
  set('u')
  trust()
end
bump()
keep()
flush()
return {'1', h.g}
"#;

/// ARGV: ttl -> 1 if something was known
const PURGE: &str = r#"
if not exists then return 0 end
settle()
local s = view()
set('u')
bump()
keep()
flush()
if s ~= 'u' then return 1 end
return 0
"#;

impl Scripts {
    pub(super) fn new() -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            load: script(LOAD),
            learn: script(LEARN),
            acquire: script(ACQUIRE),
            complete: script(COMPLETE),
            purge: script(PURGE),
        }
    }
}
