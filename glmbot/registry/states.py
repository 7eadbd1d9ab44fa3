"""The words the registry stores for lifecycles: adapter statuses, sources, run statuses, actions.

Kept apart from the SQLModel tables so that code that only names a status (the CLI's help text)
does not import SQLAlchemy.
"""

# Adapter statuses: a new version starts as a candidate; promote makes it the domain's one active
# version (the one it replaces is archived); archive retires a version without deleting it.
CANDIDATE, ACTIVE, ARCHIVED = "candidate", "active", "archived"
STATUSES = (CANDIDATE, ACTIVE, ARCHIVED)
# Where an adapter came from.
SOURCES = ("trained", "imported", "pulled")
# Training run statuses.
RUN_STATUSES = ("running", "succeeded", "failed", "cancelled")
# Activation history actions (rollback walks this log backwards).
PROMOTE, ROLLBACK, DEACTIVATE = "promote", "rollback", "archive"
