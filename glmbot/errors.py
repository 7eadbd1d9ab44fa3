"""The library's exception types.

Every message says what was wrong (the bad value, where it came from) and what to do next.
Only the CLI turns these into exit codes and one-line messages.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class GlmbotError(Exception):
    """Base class of every error glmbot raises on purpose."""


class ConfigError(GlmbotError, ValueError):
    """glmbot.toml (or an override) holds an unknown key or a bad value."""


class ModelLoadError(GlmbotError):
    """A base model could not be found or read."""


class CheckpointMismatchError(ModelLoadError):
    """Weights in a checkpoint do not fit the model its config describes."""


class QuantizationError(ModelLoadError, ValueError):
    """A quantization setting that this base, checkpoint or device cannot use."""


class PrefixCheckpointError(GlmbotError):
    """A P-Tuning v2 prefix checkpoint cannot be used with this base."""


class TokenizerError(GlmbotError):
    """A tokenizer file is missing or does not fit the model."""


class RegistryError(GlmbotError):
    """The adapter registry refused an operation."""


class UnknownDomainError(RegistryError, KeyError):
    """A domain name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_domain(name: str, known: Iterable[str], *, listed: str = "known", add: bool = True) -> UnknownDomainError:
    """The error for a domain name nothing knows: a near miss named first ("did you mean 'dental'?"),
    then the `listed` domains, then (add=True) how to create it, worded so that a typo is not
    turned into a new domain by following the hint."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    message = f"unknown domain {name!r}; " + (f"did you mean {close[0]!r}? " if close else "")
    message += f"{listed}: {', '.join(known) or 'none yet'}"
    if add:
        message += f"; {'or add a new domain' if close else 'add it'} with: glmbot domains add {name} --data FILE.jsonl"
    return UnknownDomainError(message)


class UnknownAdapterError(RegistryError, KeyError):
    """An adapter reference that matches no registered adapter."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AdapterIntegrityError(RegistryError):
    """An adapter's stored files do not match the hashes recorded at registration, or cannot be read.

    `ref` names the adapter ('hr@v2'), `damage` says in a few words what is wrong with which file.
    """

    def __init__(self, message: str, ref: str | None = None, damage: str | None = None):
        super().__init__(message)
        self.ref, self.damage = ref, damage


class DatabaseError(RegistryError):
    """The registry database is locked, unreachable or not writable."""


class DataError(GlmbotError, ValueError):
    """Training or evaluation data is missing or malformed."""


class GenerationError(GlmbotError):
    """A request could not be generated (bad parameters, non-finite logits, ...)."""


class RoutingError(GlmbotError, ValueError):
    """A router or plugin router was registered or answered wrongly."""


class ServingUnavailableError(GlmbotError):
    """The replica serving a request died or could not be reached; the request may be sent again."""
