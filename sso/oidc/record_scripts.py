"""The Lua scripts behind :mod:`sso.oidc.records`: each is one atomic step in one round trip.

Most declare every key they touch (``KEYS``), as a Redis Cluster requires. The two
*one-trip* scripts at the end run only outside a cluster: they read the keys a record names
(its grant, person and session), building them from templates :class:`~sso.storage.Keys`
made, so that a refresh or a code exchange is one round trip instead of two or three.
Redis ACLs check those keys as they are touched, like declared ones.
"""

# The redemption both code scripts start with: a replay or an unknown code ends here.
_REDEEM_CODE = """
local v = redis.call('GETDEL', KEYS[1])
if not v then
  local u = redis.call('GET', KEYS[2])
  if u then return {2, u} end
  return {0}
end
redis.call('SET', KEYS[2], v, 'EX', tonumber(ARGV[1]))
"""

# KEYS code, used; ARGV used_ttl → {1, record} first use, {2, record} replay, {0} unknown
CONSUME_CODE = _REDEEM_CODE + "return {1, v}\n"

# KEYS index; ARGV ttl, grant_id. An index must outlive every grant it lists: its TTL
# only ever grows. The indexes hold grant ids (Keys.grant builds the key from one).
INDEX_GRANT = """
redis.call('SADD', KEYS[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
end
return 1
"""

# KEYS grant, tombstone; ARGV ttl, field, value, ... → 0 when the grant was revoked already
CREATE_GRANT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# KEYS grant, tombstone; ARGV tombstone ttl → 1 when the grant existed
END_GRANT = """
redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[1]))
return redis.call('DEL', KEYS[1])
"""

# KEYS revoked-jti, grant → 1 when the access token is alive (revoked-jti: written before
# revoking an access token ended its grant; still honoured until those records expire)
# KEYS revoked-jti, client's revocation set; ARGV jti → 1 when a client-credentials token
# (no grant) is alive. Outside a cluster only: in one the two keys live in different slots.
ALIVE_WITHOUT_GRANT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
return 1
"""

ALIVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
return redis.call('EXISTS', KEYS[2])
"""

# KEYS rt; ARGV (optional) client_id → {1, record} claimed now; {2, record} already rotated
# (reuse); {0} unknown. With a client_id (the lean token path, sso/oidc/lean.py, which claims
# only what it can finish): {3} for another client's token or one addressed to RFC 8707
# resources; then, as for {0} and {2}, nothing changed and the full path decides.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then return {0} end
local rec = cjson.decode(v)
if ARGV[1] and (rec['c'] ~= ARGV[1] or rec['a']) then return {3} end
if rec['r'] == 1 then return {2, v} end
rec['r'] = 1
local ttl = redis.call('TTL', KEYS[1])
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], cjson.encode(rec), 'EX', ttl)
"""
CLAIM_REFRESH = _CLAIM + "return {1, v}\n"

# KEYS grant, user, new rt (or none); ARGV new record, ttl → {grant fields, profile}: a
# refresh's second round trip in one command outside a cluster (a pipeline object cost more
# CPU than the round trip it saves; in a cluster the three keys live in different slots).
GRANT_AND_PROFILE = """
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[1], 'EX', tonumber(ARGV[2])) end
return {redis.call('HGETALL', KEYS[1]), redis.call('HGET', KEYS[2], 'profile')}
"""

# KEYS user, session (or none) → {profile, session live}: a code exchange's reads, outside a
# cluster (the same reason as above)
SESSION_AND_PROFILE = """
local live = 1
if KEYS[2] then live = redis.call('EXISTS', KEYS[2]) end
return {redis.call('HGET', KEYS[1], 'profile'), live}
"""

# KEYS grant, tombstone, indexes..., rt (when one is kept); ARGV ttl, number of indexes,
# rt record, rt ttl, grant id, fields... → what _CREATE_GRANT returns, after the indexes
# (outside a cluster: one round trip). Only real keys are declared: Redis ACLs check them.
CREATE_GRANT_INDEXED = """
local ttl = tonumber(ARGV[1])
local last = 2 + tonumber(ARGV[2])
for i = 3, last do
  redis.call('SADD', KEYS[i], ARGV[5])
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ttl)
if #KEYS > last then redis.call('SET', KEYS[last + 1], ARGV[3], 'EX', tonumber(ARGV[4])) end
return 1
"""

# The one-trip scripts' shared part: key templates (ARGV[i] .. id .. ARGV[i + 1]) and the
# scope check that lets a script write what Client.get_allowed_scope would have kept.
_ONE_TRIP = """
local function key(i, id) return ARGV[i] .. id .. ARGV[i + 1] end
local function text(x) if type(x) == 'string' then return x end return '' end
-- the scope's words when every one is allowed (ARGV ' a b '), none twice, single-spaced:
-- then the allowed scope is the scope itself
local function words_of(scope, allowed)
  local words, list = {}, {}
  for w in string.gmatch(scope, '%S+') do
    if words[w] or not string.find(allowed, ' ' .. w .. ' ', 1, true) then return nil end
    words[w] = true
    list[#list + 1] = w
  end
  if table.concat(list, ' ') ~= scope then return nil end
  return words
end
"""

# KEYS rt, new rt; ARGV client id, allowed scopes, new rt ttl, templates of the grant and
# the person → CLAIM_REFRESH's answers; a claim of a record naming its person and with a
# scope still allowed also reads the grant and the profile and, when the scope holds
# offline_access, writes the rotated token: {1, record, grant fields, profile, rotated}.
REFRESH_ONE_TRIP = _ONE_TRIP + _CLAIM + """
if type(rec['u']) ~= 'string' or type(rec['g']) ~= 'string' then return {1, v} end
local words = words_of(text(rec['s']), ARGV[2])
if not words then return {1, v} end
local rotated = 0
if words['offline_access'] then
  local new = {g = rec['g'], c = rec['c'], s = rec['s'], r = 0, u = rec['u']}
  redis.call('SET', KEYS[2], cjson.encode(new), 'EX', tonumber(ARGV[3]))
  rotated = 1
end
return {1, v, redis.call('HGETALL', key(4, rec['g'])),
        redis.call('HGET', key(6, rec['u']), 'profile'), rotated}
"""

# KEYS code, used, new rt; ARGV used ttl, client id, redirect uri, the S256 challenge of the
# verifier ('' without one, '!' to match nothing), allowed scopes, refreshable ('1' or ''),
# grant ttl, grant expiry, rt ttl, then templates of the person, session, grant, tombstone,
# person's grants, client's grants, session's grants → CONSUME_CODE's answers; the usual
# first use (this client's code, its redirect URI and challenge, a scope still allowed, no
# RFC 8707 resources) also reads the session's liveness and the profile and, when live
# with a profile, does what CREATE_GRANT_INDEXED does: {1, record, live, profile, written,
# refresh kept}; written: 0 not (the caller decides), 1 written, 2 revoked already.
CODE_ONE_TRIP = _ONE_TRIP + _REDEEM_CODE + """
local r = cjson.decode(v)
if r['c'] ~= ARGV[2] or type(r['u']) ~= 'string' or type(r['g']) ~= 'string'
    or type(r['at']) ~= 'number' or type(r['res']) ~= 'table' or next(r['res']) ~= nil then
  return {1, v}
end
local ru = text(r['ru'])
if (ru ~= '' and ru ~= ARGV[3]) or text(r['cc']) ~= ARGV[4] then return {1, v} end
local scope = text(r['s'])
local words = words_of(scope, ARGV[5])
if not words then return {1, v} end
local sid = text(r['sid'])
local live = 1
if sid ~= '' then live = redis.call('EXISTS', key(12, sid)) end
local profile = redis.call('HGET', key(10, r['u']), 'profile')
if live == 0 or not profile then return {1, v, live, profile, 0, 0} end
local ttl = tonumber(ARGV[7])
local indexes = {key(18, r['u']), key(20, r['c'])}
if sid ~= '' then indexes[3] = key(22, sid) end
for _, index in ipairs(indexes) do
  redis.call('SADD', index, r['g'])
  if redis.call('TTL', index) < ttl then redis.call('EXPIRE', index, ttl) end
end
if redis.call('EXISTS', key(16, r['g'])) == 1 then return {1, v, 1, profile, 2, 0} end
local grant = key(14, r['g'])
redis.call('HSET', grant, 'u', r['u'], 'c', r['c'], 's', scope, 'sid', sid,
           'at', string.format('%d', r['at']), 'exp', ARGV[8])
redis.call('EXPIRE', grant, ttl)
if ARGV[6] ~= '1' or not words['offline_access'] then return {1, v, 1, profile, 1, 0} end
local rt = {g = r['g'], c = r['c'], s = scope, r = 0, u = r['u']}
redis.call('SET', KEYS[3], cjson.encode(rt), 'EX', tonumber(ARGV[9]))
return {1, v, 1, profile, 1, 1}
"""

# KEYS rt; ARGV the grant's template → {} unknown; {record, grant fields} (read only): an
# introspected refresh token and its grant in one round trip.
REFRESH_AND_GRANT = _ONE_TRIP + """
local v = redis.call('GET', KEYS[1])
if not v then return {} end
local g = cjson.decode(v)['g']
if type(g) ~= 'string' then return {v} end
return {v, redis.call('HGETALL', key(1, g))}
"""
