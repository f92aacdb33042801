"""Several workers or nodes, one relay: key leases and restocks in Redis.

Used when ``RELAY_REDIS_URL`` is set. What lives in Redis, under
``RELAY_REDIS_PREFIX`` (``stellar-relay`` by default):

- ``<prefix>:lease:<sha256 of key>``: who holds a key, ``node/owner``, with
  an expiry of ``RELAY_LEASE_SECONDS`` that its node keeps extending
  (:mod:`server.shared.leases`);
- ``<prefix>:webhook:<source>:<id>``: a webhook id seen in the last 10
  minutes (:mod:`server.shared.restocks`);
- channel ``<prefix>:restocks``: every accepted restock, once;
- channel ``<prefix>:node:<node id>``: "close this connection" notices for
  one node.

A *node* is one relay process (one Sanic worker); :mod:`server.shared.node`
runs its lifecycle and its recovery when Redis is lost.
"""

from server.shared.link import LinkState, check_reachable
from server.shared.node import RedisNode

__all__ = ["LinkState", "RedisNode", "check_reachable"]
