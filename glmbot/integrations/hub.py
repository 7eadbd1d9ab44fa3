"""Share registered adapters through the Hugging Face Hub: `push_adapter`, and `pull_adapter`
(= `download_adapter` + `register_pulled`, for callers that load the base model only when needed).

Everything goes through huggingface_hub's own client, so HF_ENDPOINT, HF_HOME / HF_HUB_CACHE,
HF_HUB_OFFLINE and the token (HF_TOKEN, or what `hf auth login` stored) work as for the `hf` CLI.
huggingface_hub reads those variables once, at import; this module reads its `constants` at each
call. The token is handed to the client and never put in a message or a log line.

A push uploads the adapter's verified files (adapter_config.json, adapter_model.safetensors,
metrics.json, routing_prompts.json) with a Hub model card as README.md in one commit, and records
repo, branch, commit and tag in the registry (`Registry.pushes`). A pull downloads only those
safetensors/JSON/Markdown files (never a pickle), checks the weights' sha256 and the base, and
registers a candidate with source "pulled" and provenance {repo, revision: the commit sha};
pulling a commit that the domain already holds changes nothing.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from glmbot.errors import AdapterIntegrityError, GlmbotError, PrefixCheckpointError
from glmbot.model.fingerprint import architecture, base_fingerprint
from glmbot.registry import AdapterInfo, Registry, check_domain_name, store
from glmbot.registry.card import PEFT_TYPE

__all__ = ["HubSnapshot", "PullResult", "PushResult", "check_repo_id", "download_adapter", "hub_base_model", "hub_error",
           "hub_model_card", "parse_repo_spec", "pull_adapter", "push_adapter", "register_pulled"]

PULLED_FILES = [store.CONFIG, store.WEIGHTS, store.METRICS, store.ROUTING, store.CARD]  # allow_patterns
PUSHED_FILES = (store.CONFIG, store.WEIGHTS, store.METRICS, store.ROUTING)  # + the generated card
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
CHATGLM2_HUB_ID = "THUDM/chatglm2-6b"
CHATGLM2_ARCH = {"num_layers": 28, "hidden_size": 4096, "ffn_hidden_size": 13696, "kv_channels": 128,
                 "num_attention_heads": 32, "multi_query_group_num": 2, "padded_vocab_size": 65024}
NOT_EVALUATIONS = ("train_loss", "loss")  # training statistics: in the card's table, not in model-index


@dataclass(frozen=True)
class PushResult:
    adapter: AdapterInfo
    repo: str
    revision: str  # the branch committed to
    commit_sha: str
    url: str  # the repo's page
    tag: str | None
    files: tuple[str, ...]


@dataclass(frozen=True)
class PullResult:
    adapter: AdapterInfo
    repo: str
    revision: str  # as asked: branch, tag or commit
    commit_sha: str
    snapshot: Path  # the files in the Hugging Face cache
    already_registered: bool  # this commit was in the domain already: nothing was registered
    promoted: bool


# ---- names --------------------------------------------------------------------------------------

def check_repo_id(repo: object) -> str:
    """`repo` if it is a Hub model id ORG/NAME, else a GlmbotError naming the value and the form."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if isinstance(repo, str) and REPO_ID_RE.fullmatch(repo):
        try:
            validate_repo_id(repo)
            return repo
        except HFValidationError:
            pass
    raise GlmbotError(f"invalid Hub repo id {repo!r}: expected ORG/NAME (letters, digits, '-', '_', '.'; no '--' "
                      "or '..'), e.g. my-team/support-prefix")


def parse_repo_spec(spec: str) -> tuple[str, str]:
    """'ORG/NAME' or 'ORG/NAME@REVISION' (branch, tag or commit) -> (repo id, revision)."""
    repo, sep, revision = str(spec).partition("@")
    if sep and not revision.strip():
        raise GlmbotError(f"empty revision in {spec!r}: write ORG/NAME@REVISION (a branch, tag or commit sha)")
    return check_repo_id(repo), revision.strip() if sep else "main"


def hub_base_model(base_model: str, arch: dict) -> str | None:
    """The Hub id to name as the card's base_model, or None when the base is a local model we cannot name."""
    if base_model.startswith("builtin:"):
        return "glmbot/builtin-" + base_model.removeprefix("builtin:")
    if REPO_ID_RE.fullmatch(base_model) and not Path(base_model).expanduser().exists():
        return base_model
    return CHATGLM2_HUB_ID if arch == CHATGLM2_ARCH else None


# ---- errors -------------------------------------------------------------------------------------

def _redact(text: str, token: str | None) -> str:
    text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
    return text.replace(token, "***") if token else text


def hub_error(exc: Exception, repo: str, doing: str, endpoint: str, token: str | None,
              revision: str | None = None) -> GlmbotError:
    """One GlmbotError for a failure of the Hub client: which call, which repo, what to do.

    The server's own message is kept (first line), with any token or bearer value masked.
    """
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(exc, OfflineModeIsEnabled):
        return GlmbotError(f"cannot {doing} {repo}: HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to reach the Hub")
    if not isinstance(exc, HfHubHTTPError) or exc.response is None:
        return GlmbotError(f"cannot reach the Hub at {endpoint} to {doing} {repo} ({type(exc).__name__}); check "
                           "the network, or HF_ENDPOINT if you use a mirror")
    status = exc.response.status_code
    said = _redact((exc.server_message or "").strip().splitlines()[0] if exc.server_message else "", token)
    said = f": {said}" if said else ""
    if isinstance(exc, RevisionNotFoundError):
        return GlmbotError(f"{repo} on {endpoint} has no revision {revision!r} (HTTP {status}{said}); use an existing "
                           f"branch, tag or commit sha, e.g. {repo}@main")
    if isinstance(exc, GatedRepoError):
        return GlmbotError(f"{repo} is gated (HTTP {status}): request access at {endpoint}/{repo} with the account "
                           f"of your token, then {doing} again")
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        return GlmbotError(f"{repo} was not found on {endpoint} (HTTP {status}): check ORG/NAME; if it is private, "
                           "log in with a token that can read it (`hf auth login` or HF_TOKEN)")
    if status == 401:
        return GlmbotError(f"the Hub at {endpoint} rejected the token (HTTP 401{said}) to {doing} {repo}: it is "
                           "invalid or expired; run `hf auth login` or set HF_TOKEN to a valid token")
    if status == 403:
        need = "write" if doing == "push to" else "read"
        return GlmbotError(f"the Hub at {endpoint} refused to let you {doing} {repo} (HTTP 403{said}): your token has "
                           f"no {need} access to {repo.split('/')[0]!r}; use a token with {need} access "
                           "(`hf auth login`) or a namespace you own")
    return GlmbotError(f"the Hub at {endpoint} answered HTTP {status} to {doing} {repo}{said}; try again later")


# ---- push ---------------------------------------------------------------------------------------

def push_adapter(registry: Registry, ref: str | int, repo: str, *, private: bool = False, revision: str | None = None,
                 tag: str | None = None, token: str | None = None, endpoint: str | None = None) -> PushResult:
    """Upload REF's verified files and a model card to `repo` (created if missing) in one commit.

    `revision` is the branch (created from main if missing; default main), `tag` a tag put on the
    new commit. The commit is recorded in the registry (`Registry.pushes`) even when the Hub then
    refuses the tag: the record then has no tag, and the refusal is raised after it.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    repo = check_repo_id(repo)
    info = registry.resolve(ref)
    token = token or get_token()
    if not token:
        raise GlmbotError(f"no Hugging Face token to push {info.ref} to {repo}: run `hf auth login` or set HF_TOKEN "
                          "(a token with write access)")
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    branch = revision or constants.DEFAULT_REVISION
    with tempfile.TemporaryDirectory(prefix="glmbot-push-") as tmp:
        folder = registry.export(info.id, Path(tmp) / "adapter")  # re-hashes every file first
        names = [n for n in PUSHED_FILES if (folder / n).is_file()]
        card = hub_model_card(info, repo, tag)
        operations = [CommitOperationAdd(n, (folder / n).read_bytes()) for n in names]
        operations.append(CommitOperationAdd(store.CARD, card.encode("utf-8")))
        api = HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo, private=private, exist_ok=True)
            if branch != constants.DEFAULT_REVISION:
                api.create_branch(repo, branch=branch, exist_ok=True)
            commit = api.create_commit(repo, operations, revision=branch,
                                       commit_message=f"Upload {info.ref} with glmbot",
                                       commit_description=f"P-Tuning v2 prefix of domain {info.domain!r}, version "
                                                          f"{info.version}, for base {info.base_model!r}.")
        except _network_errors() as exc:
            raise hub_error(exc, repo, "push to", endpoint, token, branch) from None
        except ValueError as exc:  # the Hub's validate-yaml refused the card's metadata
            raise GlmbotError(f"the Hub at {endpoint} refused the model card of {info.ref} for {repo}: "
                              f"{_redact(str(exc), token)}; this is a glmbot bug, please report it") from None
    tag_error = None
    if tag:
        try:
            api.create_tag(repo, tag=tag, revision=commit.oid, tag_message=f"{info.ref} ({commit.oid[:12]})")
        except _network_errors() as exc:
            done = f"pushed {info.ref} to {repo} as commit {commit.oid[:12]} (recorded), but could not tag it {tag!r}"
            if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 409:
                tag_error = GlmbotError(f"{done}: the tag exists already in {repo}; push again with another --tag")
            else:
                tag_error = GlmbotError(f"{done}: {hub_error(exc, repo, 'push to', endpoint, token)}")
    registry.record_push(info.id, repo=repo, revision=branch, commit_sha=commit.oid,
                         tag=tag if tag and tag_error is None else None, endpoint=endpoint)
    if tag_error is not None:
        raise tag_error
    return PushResult(info, repo, branch, commit.oid, f"{endpoint}/{repo}", tag, (*names, store.CARD))


def _network_errors() -> tuple[type[Exception], ...]:
    """What the Hub client raises for HTTP answers and transport failures (offline mode is a ConnectionError)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        import httpx2 as http  # huggingface_hub 2.x
    except ImportError:
        import httpx as http  # huggingface_hub 1.x
    return HfHubHTTPError, http.HTTPError, ConnectionError


def _eval_results(info: AdapterInfo) -> list:
    """The adapter's metrics as model-index entries: dev-set scores and the forgetting probe."""
    from huggingface_hub import EvalResult

    results = []
    for name, value in sorted(info.metrics.items()):
        if name in NOT_EVALUATIONS:
            continue
        if name.startswith("probe_"):
            dataset = {"dataset_type": "glmbot/general-probe", "dataset_name": "forgetting probe (general prompts)"}
        else:
            dataset = {"dataset_type": f"glmbot/{info.domain}-dev", "dataset_name": f"{info.domain} dev set",
                       "dataset_split": "validation"}
        results.append(EvalResult(task_type="text-generation", metric_type=name, metric_value=float(value),
                                  **dataset))
    return results


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|").replace("\n", " ")


def _rows(pairs: list[tuple[str, object]], header: tuple[str, str]) -> list[str]:
    if not pairs:
        return ["(none recorded)"]
    return [f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in pairs)]


def _probe_text(metrics: dict[str, float]) -> str:
    if "probe_kept" not in metrics:
        return "Not measured for this version."
    forgot = metrics.get("probe_forgot")
    verdict = "unknown" if forgot is None else ("yes: it answers general chat worse than the plain base"
                                                if forgot >= 0.5 else "no")
    return (f"On general prompts, the adapter's answers kept {metrics['probe_kept']:.0%} of the plain base model's "
            f"answers (`probe_kept` {metrics['probe_kept']:.4g}). Forgot general chat: {verdict}.")


def hub_model_card(info: AdapterInfo, repo: str, tag: str | None = None) -> str:
    """README.md for the Hub: ModelCardData metadata (base_model, tags, model-index) and a body."""
    from huggingface_hub import ModelCard, ModelCardData

    base_id = hub_base_model(info.base_model, info.architecture)
    tags = ["p-tuning-v2", "chatglm2", "glmbot"] + ([f"base_model:adapter:{base_id}"] if base_id else [])
    results = _eval_results(info)
    data = ModelCardData(base_model=base_id, library_name="glmbot", language="zh", tags=tags,
                         pipeline_tag="text-generation", model_name=repo.split("/")[1] if results else None,
                         eval_results=results or None)
    facts = [("domain", info.domain), ("version", f"v{info.version} (source: {info.source})"),
             ("base model", info.base_model + (f" (Hub: {base_id})" if base_id and base_id != info.base_model else "")),
             ("base fingerprint", info.base_fingerprint),
             ("architecture", ", ".join(f"{k}={v}" for k, v in info.architecture.items())),
             ("prefix length P", info.pre_seq_len), ("prefix projection", "yes" if info.prefix_projection else "no"),
             ("weights sha256", info.files.get(store.WEIGHTS, "-")), ("glmbot version", info.glmbot_version or "-")]
    data_rows = [("training samples", info.sample_count if info.sample_count is not None else "not recorded"),
                 ("dataset sha256", info.dataset_sha256 or "not recorded")]
    pull = f"{repo}@{tag}" if tag else repo
    body = [
        "", f"# {info.domain} v{info.version}: a P-Tuning v2 prefix for ChatGLM2", "",
        (f"A prefix of {info.pre_seq_len} virtual tokens trained with glmbot for the `{info.domain}` domain. It only "
         "works on the base model below: glmbot checks the base's architecture and fingerprint when it pulls or "
         "loads it."), "",
        *_rows(facts, ("", "")), "", "## Training data", "", *_rows(data_rows, ("", "")), "",
        "## Hyper-parameters", "", *_rows(sorted(info.hyperparams.items()), ("name", "value")), "",
        "## Metrics", "", *_rows(sorted(info.metrics.items()), ("metric", "value")), "",
        "## Forgetting probe", "", _probe_text(info.metrics), "", "## Use", "",
        "```bash", f"glmbot pull {pull} --domain {info.domain} --promote", f"glmbot chat --domain {info.domain}",
        "```", "", "```python", "from glmbot import Registry, load_base, load_settings",
        "from glmbot.integrations.hub import pull_adapter", "", "settings = load_settings()",
        "model, tokenizer = load_base(settings.model.base_model)",
        "with Registry.from_settings(settings) as registry:",
        f"    result = pull_adapter(registry, {pull!r}, model=model, base_model=settings.model.base_model)",
        "    prefix_state, info = registry.load_prefix_state(result.adapter.id)", "```", "",
        (f"Files: `{store.WEIGHTS}` (fp32, keys `transformer.prefix_encoder.*` as in the official P-Tuning v2 "
         f"checkpoints), `{store.CONFIG}` (PEFT-like, peft_type P_TUNING_V2), `{store.METRICS}`."), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(body)).content


# ---- pull ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HubSnapshot:
    """A downloaded adapter, checked for everything that does not depend on the base."""

    repo: str
    revision: str  # as asked: branch, tag or commit
    commit_sha: str
    folder: Path  # <HF_HUB_CACHE>/models--ORG--NAME/snapshots/<commit sha>
    config: dict  # its adapter_config.json
    endpoint: str


def download_adapter(spec: str, *, token: str | None = None, endpoint: str | None = None) -> HubSnapshot:
    """snapshot_download ORG/NAME[@REVISION] (adapter files only), then refuse what is not a sound prefix adapter."""
    from huggingface_hub import constants, get_token

    repo, revision = parse_repo_spec(spec)
    token = token or get_token() or None
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    folder = _download(repo, revision, token, endpoint)
    cfg = _adapter_config(folder, repo, revision, folder.name)
    _check_weights(folder, cfg, repo, folder.name)
    return HubSnapshot(repo, revision, folder.name, folder, cfg, endpoint)


def register_pulled(registry: Registry, snapshot: HubSnapshot, *, load_base, base_model: str,  # noqa: ANN001
                    domain: str | None = None, promote: bool = False, allow_base_mismatch: bool = False) -> PullResult:
    """Register a downloaded adapter as a candidate of `domain` (default: the one its config names).

    `load_base()` returns the configured base model; it is called only when something is to be
    registered, since a commit that the domain holds already (same repo and commit sha in a
    pulled adapter's provenance) registers nothing.
    """
    s = snapshot
    where = f"{s.repo}@{s.commit_sha[:12]}"
    if domain is None:
        domain = s.config.get("domain")
        if not isinstance(domain, str) or not domain:
            raise GlmbotError(f"{where} does not say which domain it is for; pass --domain DOMAIN")
    check_domain_name(domain)
    known, already = _pulled_before(registry, domain, s.repo, s.commit_sha), True
    if known is None:
        model, already = load_base(), False
        _check_base(s.config, where, model, base_model, allow_base_mismatch)
        provenance = {"repo": s.repo, "revision": s.commit_sha, "requested_revision": s.revision,
                      "endpoint": s.endpoint}
        try:
            known = registry.import_path(s.folder, domain, config=model.config, base_model=base_model,
                                         base_fingerprint=base_fingerprint(model), create_domain=True,
                                         allow_base_mismatch=allow_base_mismatch, source="pulled",
                                         provenance=provenance)
        except (PrefixCheckpointError, AdapterIntegrityError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
    if promote and not known.is_active:
        known = registry.promote(known.id)
    return PullResult(known, s.repo, s.revision, s.commit_sha, s.folder, already, promote)


def pull_adapter(registry: Registry, spec: str, *, model, base_model: str, domain: str | None = None,  # noqa: ANN001
                 promote: bool = False, allow_base_mismatch: bool = False, token: str | None = None,
                 endpoint: str | None = None) -> PullResult:
    """download_adapter + register_pulled, for a caller that holds the configured base `model`."""
    if domain is not None:
        check_domain_name(domain)  # before any download
    snapshot = download_adapter(spec, token=token, endpoint=endpoint)
    return register_pulled(registry, snapshot, load_base=lambda: model, base_model=base_model, domain=domain,
                           promote=promote, allow_base_mismatch=allow_base_mismatch)


def _download(repo: str, revision: str, token: str | None, endpoint: str) -> Path:
    """snapshot_download of the adapter's files only (never a pickle); Hub errors become GlmbotErrors."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo, revision=revision, allow_patterns=PULLED_FILES, token=token,
                                      endpoint=endpoint))
    except LocalEntryNotFoundError as exc:
        if constants.is_offline_mode():
            raise GlmbotError(f"{repo}@{revision} is not in the local cache ({constants.HF_HUB_CACHE}) and "
                              "HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE or pull once online") from None
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        raise hub_error(cause, repo, "pull", endpoint, token, revision) from None
    except _network_errors() as exc:
        raise hub_error(exc, repo, "pull", endpoint, token, revision) from None
    except OSError as exc:  # the cache folder: permissions, disk full
        raise GlmbotError(f"cannot write {repo} into the Hugging Face cache {constants.HF_HUB_CACHE} ({exc}); "
                          "make it writable or point HF_HOME elsewhere") from None
    if not COMMIT_RE.fullmatch(path.name):
        raise GlmbotError(f"the Hub cache returned {path} for {repo}@{revision}, not a snapshots/<commit> folder; "
                          "clear it with `hf cache rm` and pull again")
    return path


def _repo_files(folder: Path, repo: str, commit: str) -> list[str]:
    """Every file of the repo at `commit`, from the tree listing cached by snapshot_download."""
    try:
        from huggingface_hub import get_cached_repo_tree

        return sorted(f.path for f in get_cached_repo_tree(repo, revision=commit))
    except Exception:  # noqa: BLE001 - older clients or no cached listing: what was downloaded is all we know
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _adapter_config(folder: Path, repo: str, revision: str, commit: str) -> dict:
    """adapter_config.json of a pulled snapshot, after refusing repos that hold no usable adapter."""
    where = f"{repo}@{revision} (commit {commit[:12]})"
    if not (folder / store.CONFIG).is_file() or not (folder / store.WEIGHTS).is_file():
        files = _repo_files(folder, repo, commit)
        pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise PrefixCheckpointError(
                f"{where} holds its weights only as pickles ({', '.join(pickles)}): glmbot never downloads pickles "
                f"from the Hub, since loading one can run code. Ask the owner to publish {store.WEIGHTS}, or download "
                "it yourself, check it, and run `glmbot adapters import PATH --domain DOMAIN`")
        shown = ", ".join(files) or "no files"
        raise PrefixCheckpointError(
            f"{where} holds no glmbot or PEFT-style adapter ({store.CONFIG} + {store.WEIGHTS}); it holds: {shown}")
    try:
        cfg = json.loads((folder / store.CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrefixCheckpointError(f"{where}: {store.CONFIG} is not readable JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise PrefixCheckpointError(f"{where}: {store.CONFIG} holds {type(cfg).__name__}, expected a JSON object")
    if cfg.get("peft_type") != PEFT_TYPE:
        raise PrefixCheckpointError(f"{where} holds a {cfg.get('peft_type')!r} adapter, not a P-Tuning v2 prefix "
                                    f"(peft_type {PEFT_TYPE!r}): glmbot serves only prefix adapters")
    return cfg


def _check_weights(folder: Path, cfg: dict, repo: str, commit: str) -> None:
    recorded, actual = cfg.get("weights_sha256"), store.sha256_file(folder / store.WEIGHTS)
    if recorded and recorded != actual:
        raise AdapterIntegrityError(
            f"{repo}@{commit[:12]}: {store.WEIGHTS} has sha256 {actual}, but its {store.CONFIG} records {recorded}: "
            f"the copy is damaged; delete {folder} from the Hugging Face cache (`hf cache rm`) and pull again, or "
            "tell the repo's owner")


def _check_base(cfg: dict, where: str, model, base_model: str, allow_mismatch: bool) -> None:  # noqa: ANN001
    """Refuse an adapter trained for another base: another architecture always, another fingerprint unless allowed."""
    trained = cfg.get("base_model_name_or_path") or "an unknown base"
    here, theirs = architecture(model.config), cfg.get("architecture")
    if isinstance(theirs, dict) and theirs and theirs != here:
        diff = ", ".join(f"{k} {theirs.get(k)} (adapter) vs {v} (configured)" for k, v in here.items()
                         if theirs.get(k) != v)
        raise PrefixCheckpointError(
            f"{where} is a prefix for base {trained!r}, whose architecture differs from the configured "
            f"base {base_model!r}: {diff}; set base_model in glmbot.toml to {trained!r} to use it")
    fingerprint, ours = cfg.get("base_fingerprint"), base_fingerprint(model)
    if fingerprint and fingerprint != ours and not allow_mismatch:
        raise PrefixCheckpointError(
            f"{where} was trained for base {trained!r} (fingerprint {fingerprint}), but the configured "
            f"base {base_model!r} has fingerprint {ours}: a prefix only works on the weights it was trained with; "
            "set base_model in glmbot.toml to that base, or pull anyway with --allow-base-mismatch")


def _pulled_before(registry: Registry, domain: str, repo: str, commit: str) -> AdapterInfo | None:
    for info in registry.list_adapters():
        if (info.domain == domain and info.source == "pulled" and info.provenance.get("repo") == repo
                and info.provenance.get("revision") == commit):
            return info
    return None
