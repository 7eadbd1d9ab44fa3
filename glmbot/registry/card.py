"""The text files of an adapter folder: adapter_config.json (PEFT-like) and README.md (model card)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import metadata

PEFT_TYPE = "P_TUNING_V2"


@cache
def glmbot_version() -> str:
    try:
        return metadata.version("glmbot")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class AdapterDescription:
    """Everything the folder's text files say about one adapter version."""

    domain: str
    version: int
    base_model: str
    base_fingerprint: str
    architecture: dict
    pre_seq_len: int
    prefix_projection: bool
    created: datetime
    source: str
    weights_sha256: str
    provenance: dict = field(default_factory=dict)
    hyperparams: dict = field(default_factory=dict)
    dataset_sha256: str | None = None
    sample_count: int | None = None
    metrics: dict = field(default_factory=dict)


def adapter_config(d: AdapterDescription) -> dict:
    """adapter_config.json: PEFT's field names where they exist, glmbot's where they do not."""
    return {
        "peft_type": PEFT_TYPE,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": d.base_model,
        "base_fingerprint": d.base_fingerprint,
        "architecture": d.architecture,
        "pre_seq_len": d.pre_seq_len,
        "num_virtual_tokens": d.pre_seq_len,
        "prefix_projection": d.prefix_projection,
        "dtype": "float32",
        "weights_sha256": d.weights_sha256,
        "glmbot_version": glmbot_version(),
        "created": d.created.isoformat(),
        "domain": d.domain,
        "version": d.version,
        "source": d.source,
        "provenance": d.provenance,
        "training": {"hyperparams": d.hyperparams, "dataset_sha256": d.dataset_sha256,
                     "sample_count": d.sample_count},
    }


def json_bytes(value: object) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _table(rows: list[tuple[str, object]], header: tuple[str, str]) -> list[str]:
    if not rows:
        return ["(none recorded)"]
    out = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    out += [f"| {k} | {_cell(v)} |" for k, v in rows]
    return out


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card(d: AdapterDescription) -> str:
    """README.md: a Hugging Face style model card (YAML front matter + tables)."""
    facts = [("domain", d.domain), ("version", d.version), ("base model", d.base_model),
             ("base fingerprint", d.base_fingerprint), ("prefix length P", d.pre_seq_len),
             ("prefix projection", "yes" if d.prefix_projection else "no"), ("source", d.source),
             ("created", d.created.isoformat(timespec="seconds"))]
    if d.dataset_sha256:
        facts.append(("dataset sha256", d.dataset_sha256))
    if d.sample_count is not None:
        facts.append(("training samples", d.sample_count))
    facts += [(f"provenance: {k}", v) for k, v in sorted(d.provenance.items())]
    lines = [
        "---", "library_name: glmbot", f"base_model: {json.dumps(d.base_model)}",
        "tags: [p-tuning-v2, chatglm2, glmbot]", "---", "",
        f"# {d.domain} v{d.version}: a P-Tuning v2 prefix for ChatGLM2", "",
        f"A prefix of {d.pre_seq_len} virtual tokens trained for the `{d.domain}` domain. It only works on the",
        "base model below (checked by its fingerprint when loaded).", "",
        *_table(facts, ("", "")), "", "## Metrics", "",
        *_table(sorted(d.metrics.items()), ("metric", "value")), "", "## Hyper-parameters", "",
        *_table(sorted(d.hyperparams.items()), ("name", "value")), "", "## Use", "",
        "```bash", f"glmbot adapters import PATH --domain {d.domain}   # from an exported copy",
        f"glmbot chat --domain {d.domain}", "```", "",
        f"Weights: `adapter_model.safetensors` (sha256 `{d.weights_sha256}`), keys "
        "`transformer.prefix_encoder.*` as in the official P-Tuning v2 checkpoints.", "",
    ]
    return "\n".join(lines)
