"""Several hubs serving one cluster on one database (issue 11; docs/scaling.md).

- :mod:`hub.cluster.node` — this hub as a member: its beat (the lease on the spoke links it
  holds), the leader lease for the work only one hub may do, wake-ups from the store.
- :mod:`hub.cluster.peer_link` — calling a spoke that another hub holds, through that hub.
- :mod:`hub.cluster.peer_api` — the other side: the internal routes a hub serves its peers.

The tables are in :mod:`hub.store.cluster`. A hub alone (SQLite, the default) is a cluster of
one: the same code runs, it is simply always the leader and holds every spoke itself.
"""
