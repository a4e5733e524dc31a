"""RFC 8628 device requests in Redis: the record, the user-code index, tombstones and
wrong-guess counters. The record and its tombstone change in one Lua script, so that of
concurrent polls or decisions exactly one wins; the user-code index (another hash slot on
a cluster) is reserved before and removed after, see :meth:`DeviceRecords.create`.

Keys (built by :class:`sso.storage.Keys`, each with its TTL):

- ``device:{hash(device_code)}``: the request (hash), TTL = ``expires_in``;
- ``device-code:{hash(user_code)}``: user code → device hash, same TTL, deleted once decided;
- ``device-gone:{hash(device_code)}``: a tombstone outliving the record by
  ``GONE_TTL``, so a late poll says ``expired_token`` (or ``invalid_grant`` once used)
  instead of "unknown";
- ``device-tries:user:{user_id}``: a person's wrong user codes per window (§5.1 brute force).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sso.crypto import hash_secret
from sso.storage import Store, guard

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_CODE_TTL = 600  # seconds; RFC 8628 §3.2 expires_in
POLL_INTERVAL = 5  # seconds; RFC 8628 §3.2 default interval
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5: "the interval MUST be increased by 5 seconds"
GONE_TTL = 3600  # how long after expiry a device code still says expired_token
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 §6.1: no vowels, no look-alikes
USER_CODE_LENGTH = 8  # 20^8 ≈ 2^34.6 codes; with GUESS_LIMIT tries a guess is hopeless
GUESS_LIMIT = 5  # wrong codes per window per signed-in person (§5.1)
GUESS_WINDOW = 600

# KEYS device, gone; ARGV ttl, gone_ttl, field, value, ...
_CREATE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('SET', KEYS[2], 'expired', 'EX', tonumber(ARGV[2]))
return 1
"""

# KEYS device, gone; ARGV client_id, step → {status, ...}. Server time (TIME) so that
# instances with skewed clocks agree on the interval.
_POLL = """
local rec = redis.call('HMGET', KEYS[1], 'st', 'c', 'iv', 'lp', 'exp', 'u', 'at')
local st = rec[1]
if not st then
  local gone = redis.call('GET', KEYS[2])
  if gone then return {gone} end
  return {'unknown'}
end
if rec[2] ~= ARGV[1] then return {'unknown'} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(rec[5]) * 1000 <= now_ms then return {'expired'} end
if st == 'approved' then
  redis.call('HSET', KEYS[1], 'st', 'used')
  redis.call('SET', KEYS[2], 'used', 'KEEPTTL')
  return {'approved', rec[6], rec[7]}
end
if st ~= 'pending' then return {st} end
local iv = tonumber(rec[3])
local last = tonumber(rec[4] or '0')
redis.call('HSET', KEYS[1], 'lp', tostring(now_ms))
if last > 0 and now_ms - last < iv * 1000 then
  iv = iv + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'iv', tostring(iv))
  return {'slow_down', tostring(iv)}
end
return {'pending'}
"""

# KEYS device; ARGV status, user_id, auth_time → 1 decided now, 0 not pending
_DECIDE = """
if redis.call('HGET', KEYS[1], 'st') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'st', ARGV[1], 'u', ARGV[2], 'at', ARGV[3])
return 1
"""


# -- user codes (pure) ----------------------------------------------------------------------


def new_user_code() -> str:
    """``XXXX-XXXX`` from the RFC 8628 §6.1 alphabet, drawn with :mod:`secrets`."""
    chars = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return f"{chars[:4]}-{chars[4:]}"


def normalise_user_code(text: str | None) -> str | None:
    """What a person typed, as stored: ``" bcdf-ghjk "`` → ``"BCDFGHJK"``; None if malformed.

    §6.1: case and punctuation are not significant, so people need not copy them.
    """
    if not text:
        return None
    cleaned = "".join(c for c in text.upper() if c not in "- \t")
    if len(cleaned) != USER_CODE_LENGTH or any(c not in USER_CODE_ALPHABET for c in cleaned):
        return None
    return cleaned


def format_user_code(normalised: str) -> str:
    return f"{normalised[:4]}-{normalised[4:]}"


# -- storage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingDevice:
    """A device request waiting for a person's decision, as the verification page sees it."""

    user_code: str  # normalised
    client_id: str
    scope: str


class DeviceRecords:
    """Device requests, user-code index, tombstones and wrong-guess counters in Redis."""

    def __init__(self, store: Store, user_code_key: bytes) -> None:
        self.store = store
        # A user code has only ~2^34.6 values: a plain hash of it is inverted in seconds by
        # whoever reads Redis. Keyed (HMAC with a key derived from SSO_SECRET_KEY), the index
        # tells a Redis reader nothing.
        self._user_code_key = user_code_key
        self.keys = store.keys
        self._create = store.redis.register_script(_CREATE)
        self._poll = store.redis.register_script(_POLL)
        self._decide = store.redis.register_script(_DECIDE)

    def key(self, device_code: str) -> str:
        """The record of a device code (operators and tests expire it by hand)."""
        return self.keys.device(hash_secret(device_code))

    def _index(self, user_code: str) -> str:  # user codes are secrets too: keyed hash
        digest = hmac.new(self._user_code_key, user_code.encode(), hashlib.sha256).digest()
        return self.keys.device_user_code(base64.urlsafe_b64encode(digest).decode().rstrip("="))

    @guard
    def create(self, device_code: str, user_code: str, client_id: str, scope: str, *,
               expires_in: int = DEVICE_CODE_TTL, interval: int = POLL_INTERVAL) -> bool:
        """False when the user code is already live (the caller draws another).

        The user code and the request live in different hash slots (a cluster spreads
        them): the code is reserved first (SET NX: uniqueness), then the request written.
        A failure in between leaves a code naming no request, which reads as unknown until
        it expires."""
        device_hash = hash_secret(device_code)
        # No user code in the record: the (hashed) index is the only way from a code to the
        # request, and nothing reads the code back from the record.
        fields = {"c": client_id, "s": scope, "iv": str(interval), "lp": "0",
                  "st": "pending", "exp": str(int(time.time()) + expires_in)}
        flat = [item for pair in fields.items() for item in pair]
        if not self.store.redis.set(self._index(user_code), device_hash, nx=True,
                                    ex=expires_in):
            return False
        keys = [self.keys.device(device_hash), self.keys.device_tombstone(device_hash)]
        return bool(self._create(keys=keys, args=[expires_in, expires_in + GONE_TTL, *flat]))

    @guard
    def key_for_user_code(self, user_code: str) -> str | None:
        """The record a live user code points at (operators and tests expire it by hand)."""
        code = normalise_user_code(user_code)
        device_hash = self.store.redis.get(self._index(code)) if code else None
        return self.keys.device(device_hash) if device_hash else None

    @guard
    def peek(self, device_code: str) -> dict[str, str] | None:
        data: dict[str, str] = self.store.redis.hgetall(self.key(device_code))
        return data or None

    @guard
    def poll(self, device_code: str, client_id: str) -> tuple[str, list[str]]:
        """One token-endpoint poll: (status, extra). Status is one of ``unknown``,
        ``expired``, ``used``, ``denied``, ``pending``, ``slow_down`` (extra: new interval)
        or ``approved`` (extra: user id, auth time; the code is now used)."""
        device_hash = hash_secret(device_code)
        answer = self._poll(keys=[self.keys.device(device_hash),
                                  self.keys.device_tombstone(device_hash)],
                            args=[client_id, SLOW_DOWN_STEP])
        return str(answer[0]), [str(v) for v in answer[1:]]

    @guard
    def pending(self, user_code: str) -> PendingDevice | None:
        """The request a (normalised) user code names, if it still awaits a decision."""
        device_hash = self.store.redis.get(self._index(user_code))
        if not device_hash:
            return None
        data = self.store.redis.hgetall(self.keys.device(device_hash))
        if not data or data.get("st") != "pending" or int(data.get("exp", 0)) <= time.time():
            return None
        return PendingDevice(user_code, data["c"], data.get("s", ""))

    @guard
    def decide(self, user_code: str, *, approved: bool, user_id: str, auth_time: int) -> bool:
        """Record the person's answer once; False if the code was decided or gone meanwhile.

        The decision, then the user code's removal (another hash slot in a cluster): if the
        removal fails, the code still names a request that is no longer pending, which
        :meth:`pending` refuses."""
        index = self._index(user_code)
        device_hash = self.store.redis.get(index)
        if not device_hash:
            return False
        status = "approved" if approved else "denied"
        decided = bool(self._decide(keys=[self.keys.device(device_hash)],
                                    args=[status, user_id, str(auth_time)]))
        if decided:
            self.store.redis.delete(index)
        return decided

    # -- brute force (RFC 8628 §5.1) --------------------------------------------------------
    # What we limit is *wrong* codes (not requests), per signed-in person across instances:
    # a Redis INCR + EXPIRE NX counter does exactly that in one round trip. Not per IP:
    # behind a proxy or a company NAT one address is everybody, and one person's typos
    # would lock the whole company out. The page needs a signed-in person before any code
    # is checked, so every guess has someone to count against; and a right code opens one
    # device request, decided once.

    @guard
    def blocked_for(self, user_id: str) -> int:
        """Seconds until this person may try another code (0: allowed now)."""
        key = self.keys.device_tries("user", user_id)
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        if count is None or int(count) < GUESS_LIMIT:
            return 0
        return max(1, int(ttl))

    @guard
    def count_wrong(self, user_id: str) -> None:
        key = self.keys.device_tries("user", user_id)
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, GUESS_WINDOW, nx=True)
        pipe.execute()


# -- Authlib's endpoint and grant -----------------------------------------------------------
