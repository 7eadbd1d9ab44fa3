"""The adapter registry: SQLModel tables, numbered migrations, verified files, and the `Registry` API."""

from glmbot.registry.api import Registry
from glmbot.registry.info import (ActivationInfo, AdapterInfo, DomainInfo, EvaluationInfo, FileProblem, PushInfo,
                                  RunInfo, VerifyResult)
from glmbot.registry.refs import AdapterRef, check_domain_name, parse_ref
from glmbot.registry.tables import ACTIVE, ARCHIVED, CANDIDATE, STATUSES

__all__ = [
    "ACTIVE", "ARCHIVED", "CANDIDATE", "STATUSES",
    "ActivationInfo", "AdapterInfo", "AdapterRef", "DomainInfo", "EvaluationInfo", "FileProblem", "PushInfo",
    "Registry", "RunInfo", "VerifyResult", "check_domain_name", "parse_ref",
]
