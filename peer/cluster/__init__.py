"""Peers finding each other, electing a coordinator, replicating state."""
