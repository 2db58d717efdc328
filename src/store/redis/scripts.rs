//! The Lua scripts, one per store operation, each run atomically on one key's hash (the
//! fields are described in the parent module).
//!
//! Every script starts with the same prelude: the server clock, and the hash read once
//! (`HMGET`) into one local per field. The shared steps (settling, a new generation, trusting
//! the state, keeping the hash alive, viewing the state, writing the hash back) are fragments
//! of text that [`Scripts::new`] splices in where a script names them (`@settle` and so on),
//! not Lua functions: Redis runs a script's body afresh on each call, so every `local
//! function` would be a closure made anew each time, and the helpers' closures, their table of
//! fields and the `pairs` walk to write it back cost as much as the script's Redis commands.
//! Written out this way a script costs about 6-8 µs of Redis time (BENCHMARKS.md).
//!
//! The hash is written back once: one `HSET` of the fields that changed, one `HDEL` of those
//! cleared, and `PEXPIREAT` only when the hash must live longer. A trusted state's expiry and
//! the hash's own are moved only once they fell a sixteenth of the TTL behind, so a GET that
//! confirms what is known writes nothing. The fields are those the previous releases' scripts
//! use, plus `k` (which they ignore), so replicas of both can share one Redis during a rolling
//! upgrade.

use redis::Script;

pub(super) struct Scripts {
    pub(super) load: Script,
    pub(super) learn: Script,
    pub(super) acquire: Script,
    pub(super) complete: Script,
    pub(super) purge: Script,
}

/// The clock, the TTL (`ARGV[1]` in every script), and the hash's fields, one local each
/// (`false` when absent); `r` keeps them as read, for `@flush`. A hash the scripts made always
/// has a generation, so `hg` tells whether it exists.
const PRELUDE: &str = r#"
pcall(redis.replicate_commands) -- Redis < 5: TIME before writes needs effects replication
local k = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local slack = math.floor(ttl / 16)
local r = redis.call('HMGET', k, 'g', 's', 'v', 'm', 'e', 'l', 'x', 'k')
local hg, hs, hv, hm, he, hl, hx, hk = r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]
local vs, vv, vm
"#;

/// A new generation. A new hash starts from the clock in µs, so a key that expired and came
/// back never reuses a generation (nor, with it, a stale reader's). Exact: µs clocks stay far
/// below 2^53.
const BUMP: &str = r#"
if hg then
  hg = string.format('%.0f', tonumber(hg) + 1)
else
  hg = t[1] .. string.format('%06d', tonumber(t[2]))
end
"#;

/// What time decided: a lapsed lease means a write of unknown outcome (new generation, so no
/// read that started before it can record); an expired state is no longer trusted.
const SETTLE: &str = r#"
if hx and tonumber(hx) <= now then
  hl, hx, hs, hv, hm = false, false, 'u', false, false
  @bump
end
if (not he or tonumber(he) <= now) and hs ~= 'u' then hs, hv, hm = 'u', false, false end
"#;

/// The state as a reader sees it, into `vs`, `vv`, `vm`: unknown once no longer trusted.
const VIEW: &str = r#"
if he and tonumber(he) > now then
  vs, vv, vm = hs or 'u', hv or '', hm or ''
else
  vs, vv, vm = 'u', '', ''
end
"#;

/// Trusted for the TTL from now (at least 15/16 of it, between two refreshes).
const TRUST: &str = r#"
if tonumber(he or '0') < now + ttl - slack then he = string.format('%d', now + ttl) end
"#;

/// The hash outlives what it holds by a TTL (at least 15/16 of one): long enough that no read
/// straddles its removal.
const KEEP: &str = r#"
local last = math.max(tonumber(he or '0'), tonumber(hx or '0'), now) + ttl
if tonumber(hk or '0') < last - slack then hk = string.format('%d', last) end
"#;

/// Writes back the fields that differ from what was read.
const FLUSH: &str = r#"
local f, w, d = {hg, hs, hv, hm, he, hl, hx, hk}, {}, {}
for i = 1, 8 do
  if f[i] ~= r[i] then
    local name = string.sub('gsvmelxk', i, i)
    if f[i] then
      w[#w + 1] = name
      w[#w + 1] = f[i]
    else
      d[#d + 1] = name
    end
  end
end
if #w > 0 then redis.call('HSET', k, unpack(w)) end
if #d > 0 then redis.call('HDEL', k, unpack(d)) end
if hk ~= r[8] then redis.call('PEXPIREAT', k, hk) end
"#;

/// -> {generation, state, validators, last_modified, leased}
const LOAD: &str = r#"
if not hg then return {'0', 'u', '', '', '0'} end
@settle
@flush
@view
return {hg, vs, vv, vm, hl and '1' or '0'}
"#;

/// Records a read's observation (`gen`, `kind`, `rep`, `tag`, `lm`) if `gen` is still the
/// key's generation, into `learned`; the key is settled (or has no hash). A change of state
/// moves the generation on. Shared by `LEARN` and by `ACQUIRE`, which applies a read this
/// process held back before it takes the lease (one round trip for both).
const ABSORB: &str = r#"
local learned
if hg then learned = hg == gen else learned = gen == '0' and kind ~= 'u' end
if learned then
  if hg then
    @view
  else
    vs, vv, vm = 'u', '', ''
  end
  local ns, nv
  if kind == 'u' then
    if vs ~= 'u' then ns = 'u' end
  elseif kind == 'a' then
    if vs ~= 'a' then ns = 'a' end
  else
    local rec = rep .. tag .. '\n'
    ns, nv = 'p', rec
    if vs == 'p' and vv == rec then
      -- The one validator known: a change only if Last-Modified moved.
      if vm == lm then ns = nil else nv = vv end
    elseif vs == 'p' then
      local found, count = nil, 0
      for one in string.gmatch(vv, '[^\n]*\n') do
        count = count + 1
        if string.sub(one, 1, 16) == rep then found = one end
      end
      if found == rec then
        -- The same validator: a change only if Last-Modified moved.
        if vm == lm then ns = nil else nv = vv end
      elseif not found and count < 4 then
        nv = vv .. rec
      end
    end
  end
  if ns then
    hs = ns
    if ns == 'p' then
      hv, hm = nv, lm ~= '' and lm or false
    else
      hv, hm = false, false
    end
    @bump
  end
  @trust
  @keep
end
"#;

/// ARGV: ttl, generation, kind (v|a|u), representation, opaque, last_modified
/// -> {recorded (1|0), the generation after}
const LEARN: &str = r#"
local gen, kind, rep, tag, lm = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not hg then
  if gen ~= '0' or kind == 'u' then return {gen == '0' and '1' or '0', '0'} end
else
  @settle
end
@absorb
@flush
return {learned and '1' or '0', hg or '0'}
"#;

/// ARGV: ttl, lease ms, lease id, refusal (''|m|*|n), variant (8 hex), then a read held back
/// to apply first (generation or '' for none, kind, representation, opaque, last_modified, as
/// for `LEARN`), then tags...
/// -> {'0', generation} held by another, {'1', generation, state, validators, lm} taken, or
/// {'2', generation, state, validators, lm} refused: no lease is held and the state shows the
/// precondition fails (`m` If-Match with these tags, `*` If-Match: *, `n` If-None-Match: *),
/// so none is taken and nothing changes (but the read held back, if it still applies).
const ACQUIRE: &str = r#"
vs, vv, vm = 'u', '', ''
if hg then
  @settle
end
local gen, kind, rep, tag, lm = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
if gen ~= '' then
  @absorb
end
if hg then
  if hl then
    @flush
    return {'0', hg}
  end
  @view
  local refusal = ARGV[4]
  if refusal ~= '' then
    local refused = false
    if vs == 'p' then
      local of_variant, matched = false, false
      for one in string.gmatch(vv, '[^\n]*\n') do
        if string.sub(one, 1, 8) == ARGV[5] then
          of_variant = true
          local opaque = string.sub(one, 17, -2)
          for i = 11, #ARGV do
            if ARGV[i] == opaque then matched = true end
          end
        end
      end
      refused = of_variant and (refusal == 'n' or (refusal == 'm' and not matched))
    elseif vs == 'a' then
      refused = ARGV[5] == '00000000' and refusal ~= 'n'
    end
    if refused then
      @flush
      return {'2', hg, vs, vv, vm}
    end
  end
end
hl = ARGV[3]
hx = string.format('%d', now + tonumber(ARGV[2]))
@bump
@keep
@flush
return {'1', hg, vs, vv, vm}
"#;

/// ARGV: ttl, lease id, kind (r|d|u|n), representation, opaque, last_modified
/// -> {recorded (1), or ignored (0: not the holder, or the lease lapsed), the generation after}
const COMPLETE: &str = r#"
if hl ~= ARGV[2] then return {'0', hg or '0'} end
if tonumber(hx or '0') <= now then
  @settle
  @keep
  @flush
  return {'0', hg}
end
@settle
hl, hx = false, false
local kind = ARGV[3]
if kind == 'r' then
  hs, hv, hm = 'p', ARGV[4] .. ARGV[5] .. '\n', ARGV[6] ~= '' and ARGV[6] or false
  @trust
elseif kind == 'd' then
  hs, hv, hm = 'a', false, false
  @trust
elseif kind == 'u' then
  hs, hv, hm = 'u', false, false
  @trust
end
@bump
@keep
@flush
return {'1', hg}
"#;

/// ARGV: ttl -> 1 if something was known
const PURGE: &str = r#"
if not hg then return 0 end
@settle
@view
local known = vs ~= 'u'
hs, hv, hm = 'u', false, false
@bump
@keep
@flush
if known then return 1 end
return 0
"#;

/// The fragments a script may name, in the order they are spliced in (a fragment that names
/// others comes before them).
const FRAGMENTS: [(&str, &str); 7] = [
    ("@absorb", ABSORB),
    ("@settle", SETTLE),
    ("@bump", BUMP),
    ("@view", VIEW),
    ("@trust", TRUST),
    ("@keep", KEEP),
    ("@flush", FLUSH),
];

/// The prelude and `body`, its fragments spliced in.
fn expand(body: &str) -> String {
    let mut text = format!("{PRELUDE}{body}");
    for (name, fragment) in FRAGMENTS {
        text = text.replace(name, fragment);
    }
    text
}

impl Scripts {
    pub(super) fn new() -> Self {
        let script = |body: &str| Script::new(&expand(body));
        Self {
            load: script(LOAD),
            learn: script(LEARN),
            acquire: script(ACQUIRE),
            complete: script(COMPLETE),
            purge: script(PURGE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fragment_is_spliced_in() {
        for body in [LOAD, LEARN, ACQUIRE, COMPLETE, PURGE] {
            let text = expand(body);
            assert!(!text.contains('@'), "a fragment name is left in:\n{text}");
        }
    }
}
