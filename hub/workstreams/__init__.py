"""Agent workstreams at the hub: the service (``service``: leasing, delivery, approvals,
resume), choosing a spoke (``routing``, pure), persistence (``store``) and REST routes (``api``)."""
