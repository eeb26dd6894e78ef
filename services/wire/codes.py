"""The error codes an error reply carries (services.wire.messages), kept apart so a client
that must start fast (the CNI plugin) can name them without loading the schemas."""
from __future__ import annotations

INVALID = "invalid"
NOT_FOUND = "not_found"
EXISTS = "exists"
EXHAUSTED = "exhausted"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"
