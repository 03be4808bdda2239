"""Every Redis key the bridge reads or writes: the device store, worker membership, device
leases and push claims.

Each starts with ``pb:``, so the bridge can share a Redis database. These strings are stored data: running deployments (and their rolling upgrades) depend on each
one staying exactly as it is. A ``..._PREFIX`` is followed by the id it names; a ``..._KEY`` is
a whole key.
Every key lives in one Redis database (a single instance or a primary with replicas): the
store's transactions and the shard scripts span several keys, so Redis Cluster is not supported.
"""

from __future__ import annotations

# --- the device store (bridge/store/redis.py)

#: + device id: a hash; ``data`` is the device record (bridge/store/codec.py, tokens encrypted),
#: ``cp_id``/``cp_ms`` its checkpoint, kept apart so that a worker's frequent checkpoint writes
#: never race an API write of the rest of the device.
DEVICE_PREFIX = "pb:dev:"
#: + client id: a set of the client's device ids.
CLIENT_PREFIX = "pb:client:"
#: A sorted set of every device id, score 0, paged with ZRANGEBYLEX.
DEVICES_KEY = "pb:devices"
#: A stream of ``{kind, device_id}``, appended in the same MULTI/EXEC as the write it describes;
#: its entry ids are the change feed's positions.
CHANGES_KEY = "pb:changes"
#: A known plaintext, encrypted: detects a store opened with another key.
KEY_CHECK_KEY = "pb:meta:keycheck"
#: Written by the store's ping to prove it is writable; expires.
PING_KEY = "pb:meta:ping"
#: + device id: JSON of what the device's worker last published (session, recent decisions).
STATUS_PREFIX = "pb:status:"
#: + device id: a sorted set of the push ids the app acknowledged, scored by the ack time.
ACKS_PREFIX = "pb:acks:"
#: + keyed hash of a push token (``TokenCipher.lookup_hash``): a set of ``"<deviceId> <type>"``,
#: the registrations holding that token.
PUSH_TOKEN_PREFIX = "pb:ptok:"
#: ``"1"`` once the devices written before the push-token index existed were indexed.
PUSH_TOKEN_INDEXED_KEY = "pb:meta:ptok"

# --- workers and device ownership (bridge/worker/shard.py)

#: + worker id: JSON ``{id, instance, started, ts}``, expires unless the worker heartbeats.
WORKER_PREFIX = "pb:worker:"
#: A set of the worker ids that have announced themselves (pruned of the lapsed ones on read).
WORKERS_KEY = "pb:workers"
#: + device id: the id of the worker holding the device's lease, expires unless renewed.
LEASE_PREFIX = "pb:lease:"

# --- push claims (bridge/push/redis_claims.py)

#: + push id: ``c:<holder>`` (claimed, not sent yet) or ``s:<holder>`` (its send has started),
#: where the holder is ``<workerId> <instance>``.
CLAIM_PREFIX = "pb:claim:"
