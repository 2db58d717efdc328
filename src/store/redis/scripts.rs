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

/// Shared by every script: the server clock, settling of lapsed leases and expired states,
/// generations, and the hash's own lifetime. `ARGV[1]` is always the state TTL in ms.
const PRELUDE: &str = r#"
pcall(redis.replicate_commands) -- Redis < 5: TIME before writes needs effects replication
local k = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local function num(field) return tonumber(redis.call('HGET', k, field) or '0') end
-- A new hash starts from the clock in µs, so a key that expired and came back never reuses
-- a generation (nor, with it, a stale reader's).
local function bump()
  if redis.call('HEXISTS', k, 'g') == 0 then
    redis.call('HINCRBY', k, 'g', t[1] .. string.format('%06d', tonumber(t[2])))
  else
    redis.call('HINCRBY', k, 'g', 1)
  end
end
local function set(s, v, m)
  redis.call('HSET', k, 's', s)
  if s == 'p' then
    redis.call('HSET', k, 'v', v)
    if m ~= '' then redis.call('HSET', k, 'm', m) else redis.call('HDEL', k, 'm') end
  else
    redis.call('HDEL', k, 'v', 'm')
  end
end
-- What time decided: a lapsed lease means a write of unknown outcome (new generation, so no
-- read that started before it can record); an expired state is no longer trusted.
local function settle()
  local x = redis.call('HGET', k, 'x')
  if x and tonumber(x) <= now then
    redis.call('HDEL', k, 'l', 'x')
    set('u')
    bump()
  end
  local e = redis.call('HGET', k, 'e')
  if not e or tonumber(e) <= now then
    if redis.call('HGET', k, 's') ~= 'u' then set('u') end
  end
end
local function view()
  local e = redis.call('HGET', k, 'e')
  if not e or tonumber(e) <= now then return 'u', '', '' end
  return redis.call('HGET', k, 's') or 'u', redis.call('HGET', k, 'v') or '',
    redis.call('HGET', k, 'm') or ''
end
local function trust() redis.call('HSET', k, 'e', string.format('%d', now + ttl)) end
-- The hash outlives what it holds by a TTL: long enough that no read straddles its removal.
local function keep()
  local last = math.max(num('e'), num('x'), now)
  redis.call('PEXPIRE', k, string.format('%d', last + ttl - now))
end
"#;

/// -> {generation, state, validators, last_modified, leased}
const LOAD: &str = r#"
if redis.call('EXISTS', k) == 0 then return {'0', 'u', '', '', '0'} end
settle()
local s, v, m = view()
local leased = redis.call('HEXISTS', k, 'l') == 1 and '1' or '0'
return {redis.call('HGET', k, 'g'), s, v, m, leased}
"#;

/// ARGV: ttl, generation, kind (v|a|u), representation, opaque, last_modified -> 1 recorded
const LEARN: &str = r#"
local gen, kind, rep, tag, lm = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local s, v, m = 'u', '', ''
if redis.call('EXISTS', k) == 0 then
  if gen ~= '0' then return 0 end
  if kind == 'u' then return 1 end
else
  settle()
  if redis.call('HGET', k, 'g') ~= gen then return 0 end
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
return 1
"#;

/// ARGV: ttl, lease ms, lease id -> {'0'} held, or {'1', generation, state, validators, lm}
const ACQUIRE: &str = r#"
if redis.call('EXISTS', k) == 1 then
  settle()
  if redis.call('HEXISTS', k, 'l') == 1 then return {'0'} end
end
redis.call('HSET', k, 'l', ARGV[3], 'x', string.format('%d', now + tonumber(ARGV[2])))
bump()
local s, v, m = view()
keep()
return {'1', redis.call('HGET', k, 'g'), s, v, m}
"#;

/// ARGV: ttl, lease id, kind (r|d|u|n), representation, opaque, last_modified
/// -> 1 recorded, 0 ignored (not the holder, or the lease lapsed)
const COMPLETE: &str = r#"
if redis.call('HGET', k, 'l') ~= ARGV[2] then return 0 end
if num('x') <= now then
  settle()
  keep()
  return 0
end
settle()
redis.call('HDEL', k, 'l', 'x')
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
return 1
"#;

/// ARGV: ttl -> 1 if something was known
const PURGE: &str = r#"
if redis.call('EXISTS', k) == 0 then return 0 end
settle()
local s = view()
set('u')
bump()
keep()
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
