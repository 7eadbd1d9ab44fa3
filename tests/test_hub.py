"""`glmbot push` / `glmbot pull` through huggingface_hub's real client against a stand-in Hub on 127.0.0.1.

The stand-in (tests/hub_standin.py) answers the HTTP routes the client calls; huggingface_hub is
pointed at it by patching its `constants` (it reads HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE once, at
import), and one test runs `glmbot pull` in a fresh process where the environment variables alone
do it. Nothing leaves the loopback interface.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging

import pytest
import torch
from cli_helpers import cli, cli_process, make_project
from hub_standin import StandinHub
from huggingface_hub import ModelCard, constants
from registry_fixtures import ARCH, WIDTH
from rich.console import Console
from sqlalchemy import create_engine, text

from glmbot.cli import common
from glmbot.config import load_settings
from glmbot.integrations.hub import download_adapter, pull_adapter, register_pulled
from glmbot.model import load_base
from glmbot.model.fingerprint import architecture, base_fingerprint
from glmbot.model.prefix_io import EMBEDDING_KEY
from glmbot.registry import Registry
from glmbot.registry.store import CONFIG, METRICS, ROUTING, WEIGHTS

WRITE_TOKEN = "hf_teamWriteTokenSECRET0123456789"  # may write to namespace "team"
OTHER_TOKEN = "hf_otherTokenSECRET9876543210"  # valid, but only for namespace "someone-else"
BAD_TOKEN = "hf_revokedTokenSECRET5555555555"  # unknown to the Hub: 401
TOKENS = (WRITE_TOKEN, OTHER_TOKEN, BAD_TOKEN)
REPO = "team/support-prefix"
DATASET_SHA = "d" * 64
METRIC_VALUES = {"rouge-l": 41.2, "bleu-4": 12.5, "probe_kept": 0.93, "probe_forgot": 0.0, "train_loss": 4.1}
TABLES = ("domains", "adapters", "activations", "evaluations", "training_runs", "hub_pushes")


@pytest.fixture(scope="module")
def tiny():
    return load_base("builtin:tiny", dtype="float32", device="cpu")[0]


@pytest.fixture
def standin():
    hub = StandinHub(tokens={WRITE_TOKEN: {"team"}, OTHER_TOKEN: {"someone-else"}}, echo_auth_in_errors=True)
    yield hub.start()
    hub.stop()


@pytest.fixture
def hf_home(tmp_path, monkeypatch, standin):
    """huggingface_hub talking to the stand-in, its cache and token file under tmp, HF_TOKEN = WRITE_TOKEN."""
    home = tmp_path / "hf"
    patched = {"ENDPOINT": standin.url,
               "HUGGINGFACE_CO_URL_TEMPLATE": standin.url + "/{repo_id}/resolve/{revision}/{filename}",
               "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_ASSETS_CACHE": str(home / "assets"),
               "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
               "HF_XET_CACHE": str(home / "xet"), "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
               "HF_HUB_OFFLINE": False}
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    # The same through the environment, for the subprocess test (a fresh huggingface_hub reads these).
    for name, value in {"HF_ENDPOINT": standin.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
                        "HF_TOKEN": WRITE_TOKEN}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE",
                 "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(common, "console", Console(width=300, force_terminal=False))
    monkeypatch.setattr(common, "err_console", Console(width=300, force_terminal=False, stderr=True))
    return home


# ---- helpers ------------------------------------------------------------------------------------

def open_registry(config) -> Registry:
    return Registry.from_settings(load_settings(config))


def register_adapter(config, tiny, *, seed: int = 0, domain: str = "support", **overrides):
    """A trained-looking adapter (metrics, probe, data summary) in the project's registry."""
    width = overrides.pop("width", tiny.config.prefix_width)
    state = {EMBEDDING_KEY: torch.randn(8, width, generator=torch.Generator().manual_seed(seed))}
    kwargs = {"base_model": "builtin:tiny", "base_fingerprint": base_fingerprint(tiny),
              "architecture": architecture(tiny.config), "metrics": METRIC_VALUES,
              "hyperparams": {"learning_rate": 0.006, "max_steps": 300}, "dataset_sha256": DATASET_SHA,
              "sample_count": 120, "routing_prompts": ["订单什么时候发货？"], "create_domain": True}
    with open_registry(config) as reg:
        return reg.register_adapter(domain, state, **{**kwargs, **overrides})


def adapter_files(config, ref: str, tmp_path) -> dict[str, bytes]:
    """The files `adapters export` writes for REF: what a hand-made Hub repo would hold."""
    with open_registry(config) as reg:
        out = reg.export(ref, tmp_path / f"export-{ref.replace('@', '-')}")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def db_state(config) -> tuple[dict, list[str]]:
    """Every registry row and every adapter file path: to assert that nothing was registered."""
    settings = load_settings(config)
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            rows = {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY id"))] for t in TABLES}
    finally:
        engine.dispose()
    root = settings.adapters_dir
    return rows, sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith("registry.db"))


def one_error(code: int, err: str, *needles: str) -> str:
    """The single `error:` line of a failed command, checked to contain every needle."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- round trips --------------------------------------------------------------------------------

def test_push_then_pull_round_trip(standin, hf_home, tmp_path, tiny, capsys):
    team_a, team_b = make_project(tmp_path / "a"), make_project(tmp_path / "b")
    pushed = register_adapter(team_a, tiny)
    code, out, err = cli(team_a, "push", "support@v1", "--repo", REPO, "--tag", "v3", capsys=capsys)
    assert code == 0, err
    repo = standin.repos[REPO]
    head = repo.branches["main"]
    assert repo.tags == {"v3": head} and head[:12] in out
    files = standin.files(REPO)
    assert set(files) == {".gitattributes", "README.md", CONFIG, WEIGHTS, METRICS, ROUTING}
    assert sha256(files[WEIGHTS]) == pushed.files[WEIGHTS]
    # Every file went as a regular base64 commit entry through implemented routes: no LFS, no Xet.
    assert standin.unhandled == [] and set(standin.commit_keys) == {"header", "file"}

    card = ModelCard(files["README.md"].decode("utf-8"))
    assert card.data.base_model == "glmbot/builtin-tiny" and card.data.library_name == "glmbot"
    assert card.data.language == "zh"
    assert set(card.data.tags) == {"p-tuning-v2", "chatglm2", "glmbot", "base_model:adapter:glmbot/builtin-tiny"}
    scores = {r.metric_type: (r.dataset_type, r.metric_value) for r in card.data.eval_results}
    assert scores == {"rouge-l": ("glmbot/support-dev", 41.2), "bleu-4": ("glmbot/support-dev", 12.5),
                      "probe_kept": ("glmbot/general-probe", 0.93), "probe_forgot": ("glmbot/general-probe", 0.0)}
    for fact in ("| training samples | 120 |", DATASET_SHA, "| learning_rate | 0.006 |", "kept 93%",
                 "Forgot general chat: no", f"glmbot pull {REPO}@v3", "pull_adapter(registry"):
        assert fact in card.text, fact

    with open_registry(team_a) as reg:
        pushes = reg.pushes("support@v1")
        original, _ = reg.load_prefix_state("support@v1")
    assert [(p.repo, p.revision, p.commit_sha, p.tag, p.endpoint) for p in pushes] == [
        (REPO, "main", head, "v3", standin.url)]
    code, out, _ = cli(team_a, "adapters", "show", "support@v1", capsys=capsys)
    assert code == 0 and REPO in out and head[:12] in out

    code, out, err = cli(team_b, "pull", f"{REPO}@v3", "--promote", capsys=capsys)
    assert code == 0, err
    with open_registry(team_b) as reg:
        [got] = reg.list_adapters()
        state, _ = reg.load_prefix_state(got.id)
    assert (got.ref, got.status, got.source) == ("support@v1", "active", "pulled")
    assert (got.provenance["repo"], got.provenance["revision"], got.provenance["requested_revision"]) == (
        REPO, head, "v3")
    assert got.files[WEIGHTS] == pushed.files[WEIGHTS]
    assert (got.metrics, got.hyperparams, got.dataset_sha256, got.sample_count) == (
        pushed.metrics, pushed.hyperparams, pushed.dataset_sha256, pushed.sample_count)
    assert torch.equal(state[EMBEDDING_KEY], original[EMBEDDING_KEY])

    before = db_state(team_b)  # the same commit again (through the branch this time): a no-op that says so
    code, out, err = cli(team_b, "pull", REPO, capsys=capsys)
    assert code == 0, err
    assert f"commit {head[:12]}) is already registered as support@v1" in out and db_state(team_b) == before
    assert not any(t in out + err for t in TOKENS)


def test_push_to_a_branch_then_pull_it_by_branch_and_by_commit(standin, hf_home, tmp_path, tiny, capsys):
    team_a, team_b = make_project(tmp_path / "a"), make_project(tmp_path / "b")
    register_adapter(team_a, tiny)
    with open_registry(team_a) as reg:
        reg.promote("support@v1")
    code, _, err = cli(team_a, "push", "support", "--repo", REPO, "--revision", "dev", "--private", capsys=capsys)
    assert code == 0, err  # REF "support": the domain's active adapter
    repo = standin.repos[REPO]
    assert repo.private and WEIGHTS in repo.resolve("dev").files and WEIGHTS not in repo.resolve("main").files
    dev = repo.branches["dev"]

    code, out, err = cli(team_b, "pull", f"{REPO}@dev", "--domain", "after-sales", capsys=capsys)
    assert code == 0, err
    with open_registry(team_b) as reg:
        [got] = reg.list_adapters()
    assert (got.ref, got.status, got.provenance["revision"]) == ("after-sales@v1", "candidate", dev)
    assert "glmbot adapters promote after-sales@v1" in out
    before = db_state(team_b)
    code, out, _ = cli(team_b, "pull", f"{REPO}@{dev}", "--domain", "after-sales", capsys=capsys)
    assert code == 0 and "already registered as after-sales@v1" in out and db_state(team_b) == before

    snapshot = download_adapter(f"{REPO}@{dev}")  # the library: a no-op never loads the base model
    with open_registry(team_b) as reg:
        again = register_pulled(reg, snapshot, load_base=lambda: pytest.fail("loaded the base for a no-op"),
                                base_model="builtin:tiny", domain="after-sales")
        assert again.already_registered and again.adapter.ref == "after-sales@v1" and db_state(team_b) == before
        other = pull_adapter(reg, f"{REPO}@dev", model=tiny, base_model="builtin:tiny", promote=True)
    assert (other.adapter.ref, other.adapter.status, other.already_registered) == ("support@v1", "active", False)


def test_offline_pull_uses_the_cache_or_says_why_it_cannot(standin, hf_home, tmp_path, tiny, capsys, monkeypatch):
    team_a, team_b, team_c = (make_project(tmp_path / n) for n in "abc")
    register_adapter(team_a, tiny)
    assert cli(team_a, "push", "support@v1", "--repo", REPO, "--tag", "v3", capsys=capsys)[0] == 0
    assert cli(team_b, "pull", f"{REPO}@v3", capsys=capsys)[0] == 0  # fills the cache
    head = standin.repos[REPO].branches["main"]
    standin.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    code, _, err = cli(team_c, "pull", f"{REPO}@v3", capsys=capsys)
    assert code == 0, err
    with open_registry(team_c) as reg:
        [got] = reg.list_adapters()
    assert got.provenance["revision"] == head and got.source == "pulled"

    before = db_state(team_c)
    code, _, err = cli(team_c, "pull", "team/never-pulled", capsys=capsys)
    one_error(code, err, "team/never-pulled@main is not in the local cache", "unset HF_HUB_OFFLINE or pull once online")
    assert db_state(team_c) == before


def test_pull_in_a_fresh_process_follows_the_hf_environment(standin, hf_home, tmp_path, tiny, capsys):
    team_a, team_b = make_project(tmp_path / "a"), make_project(tmp_path / "b")
    register_adapter(team_a, tiny)
    assert cli(team_a, "push", "support@v1", "--repo", REPO, capsys=capsys)[0] == 0
    done = cli_process(team_b, "pull", REPO, "--promote")  # HF_ENDPOINT, HF_HOME, HF_TOKEN from the environment
    assert done.returncode == 0, done.stderr
    assert (hf_home / "hub" / "models--team--support-prefix" / "snapshots").is_dir()
    with open_registry(team_b) as reg:
        assert [(a.ref, a.status) for a in reg.list_adapters()] == [("support@v1", "active")]
    assert WRITE_TOKEN not in done.stdout + done.stderr


# ---- bad input: one clear error, nothing registered ----------------------------------------------

@pytest.mark.parametrize("args, shown", [
    (("push", "support@v1", "--repo", "support-prefix"), "'support-prefix'"),
    (("push", "support@v1", "--repo", "team/support--prefix"), "'team/support--prefix'"),
    (("pull", "team/a/b"), "'team/a/b'"),
    (("pull", "https://huggingface.co/team/x"), "'https://huggingface.co/team/x'"),
])
def test_malformed_repo_ids_are_refused_before_any_request(standin, hf_home, tmp_path, tiny, capsys, args, shown):
    project = make_project(tmp_path / "a")
    register_adapter(project, tiny)
    before = db_state(project)
    code, _, err = cli(project, *args, capsys=capsys)
    one_error(code, err, f"invalid Hub repo id {shown}", "expected ORG/NAME")
    assert standin.requests == [] and db_state(project) == before


def test_push_without_a_token_says_how_to_log_in(standin, hf_home, tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # and the token file under the tmp HF_HOME does not exist
    project = make_project(tmp_path / "a")
    register_adapter(project, tiny)
    before = db_state(project)
    code, _, err = cli(project, "push", "support@v1", "--repo", REPO, capsys=capsys)
    one_error(code, err, "no Hugging Face token", "run `hf auth login` or set HF_TOKEN")
    assert standin.requests == [] and db_state(project) == before


@pytest.mark.parametrize("token, needles", [
    (BAD_TOKEN, ("rejected the token (HTTP 401", "run `hf auth login` or set HF_TOKEN")),
    (OTHER_TOKEN, ("HTTP 403", "no write access to 'team'")),
])
def test_push_refused_by_the_hub_never_shows_the_token(standin, hf_home, tmp_path, tiny, capsys, caplog, monkeypatch,
                                                       token, needles):
    monkeypatch.setenv("HF_TOKEN", token)
    caplog.set_level(logging.INFO)  # what `glmbot --verbose` shows
    project = make_project(tmp_path / "a")
    register_adapter(project, tiny)
    before = db_state(project)
    code, out, err = cli(project, "--verbose", "push", "support@v1", "--repo", REPO, capsys=capsys)
    one_error(code, err, f"to push to {REPO}" if token == BAD_TOKEN else f"push to {REPO}", *needles)
    assert REPO not in standin.repos and db_state(project) == before
    assert any(r.name.startswith(("httpx", "huggingface_hub")) for r in caplog.records)  # the log was captured...
    assert token not in out + err + caplog.text  # ...and holds no token, nor does the output


def test_pull_errors_from_the_hub(standin, hf_home, tmp_path, tiny, capsys, caplog, monkeypatch):
    team_a, team_b = make_project(tmp_path / "a"), make_project(tmp_path / "b")
    register_adapter(team_a, tiny)
    files = adapter_files(team_a, "support@v1", tmp_path)
    standin.seed(REPO, files)
    standin.seed("team/gated-prefix", files, gated=True)
    register_adapter(team_b, tiny, seed=1)
    before = db_state(team_b)
    caplog.set_level(logging.INFO)  # what `glmbot --verbose` shows

    code, _, err = cli(team_b, "pull", "team/nothing-here", capsys=capsys)
    one_error(code, err, "team/nothing-here was not found on", "(HTTP 404)", "check ORG/NAME")
    code, _, err = cli(team_b, "pull", f"{REPO}@no-such-branch", capsys=capsys)
    one_error(code, err, "has no revision 'no-such-branch'", f"{REPO}@main")
    monkeypatch.setenv("HF_TOKEN", OTHER_TOKEN)
    code, _, err = cli(team_b, "pull", "team/gated-prefix", capsys=capsys)
    one_error(code, err, "team/gated-prefix is gated (HTTP 403)", f"request access at {standin.url}/team/gated-prefix")
    monkeypatch.setenv("HF_TOKEN", BAD_TOKEN)
    code, out, err = cli(team_b, "pull", REPO, capsys=capsys)
    one_error(code, err, "rejected the token (HTTP 401", "Authorization: Bearer ***")
    assert not any(t in out + err + caplog.text for t in TOKENS)
    assert db_state(team_b) == before


def test_pull_refuses_repos_without_a_usable_adapter(standin, hf_home, tmp_path, tiny, capsys):
    project = make_project(tmp_path / "a")
    register_adapter(project, tiny)
    buffer = io.BytesIO()
    torch.save({EMBEDDING_KEY: torch.zeros(8, tiny.config.prefix_width)}, buffer)
    standin.seed("team/official-ckpt", {"pytorch_model.bin": buffer.getvalue(),
                                        "config.json": json.dumps({"pre_seq_len": 8}).encode()})
    standin.seed("team/notes", {"README.md": b"# notes\n", "config.json": b"{}"})
    lora = adapter_files(project, "support@v1", tmp_path)
    lora[CONFIG] = json.dumps({"peft_type": "LORA", "r": 8}).encode()
    standin.seed("team/a-lora", lora)
    before = db_state(project)

    code, _, err = cli(project, "pull", "team/official-ckpt", capsys=capsys)
    one_error(code, err, "only as pickles (pytorch_model.bin)", "never downloads pickles", "glmbot adapters import")
    assert not [p for p in hf_home.rglob("*.bin")]  # the pickle was never fetched
    code, _, err = cli(project, "pull", "team/notes", capsys=capsys)
    one_error(code, err, "holds no glmbot or PEFT-style adapter", "it holds: .gitattributes, README.md, config.json")
    code, _, err = cli(project, "pull", "team/a-lora", capsys=capsys)
    one_error(code, err, "holds a 'LORA' adapter, not a P-Tuning v2 prefix")
    assert db_state(project) == before


@pytest.mark.parametrize("other", ["architecture", "fingerprint"])
def test_pull_refuses_an_adapter_for_another_base(standin, hf_home, tmp_path, tiny, capsys, other):
    elsewhere, project = make_project(tmp_path / "elsewhere"), make_project(tmp_path / "a")
    if other == "architecture":
        register_adapter(elsewhere, tiny, base_model="someone/chatglm2-mini", architecture=ARCH, width=WIDTH,
                         base_fingerprint="sha256:0123456789abcdef")
        needles = ("is a prefix for base 'someone/chatglm2-mini'", "num_layers 2 (adapter) vs 6 (configured)")  # the builtin base has 6 layers
    else:
        register_adapter(elsewhere, tiny, base_model="someone/other-tiny", base_fingerprint="sha256:feedfacefeedface")
        needles = ("trained for base 'someone/other-tiny' (fingerprint sha256:feedfacefeedface)",
                   "--allow-base-mismatch")
    standin.seed("team/other-base", adapter_files(elsewhere, "support@v1", tmp_path))
    register_adapter(project, tiny)
    before = db_state(project)
    code, _, err = cli(project, "pull", "team/other-base", capsys=capsys)
    one_error(code, err, *needles)
    assert db_state(project) == before
    if other == "fingerprint":  # same architecture: the user may insist
        code, _, err = cli(project, "pull", "team/other-base", "--allow-base-mismatch", capsys=capsys)
        assert code == 0, err


def test_pull_refuses_weights_that_differ_from_their_recorded_sha256(standin, hf_home, tmp_path, tiny, capsys):
    project = make_project(tmp_path / "a")
    register_adapter(project, tiny)
    register_adapter(project, tiny, seed=7)
    files = adapter_files(project, "support@v1", tmp_path)
    files[WEIGHTS] = adapter_files(project, "support@v2", tmp_path)[WEIGHTS]  # valid safetensors, wrong bytes
    standin.seed("team/damaged", files)
    before = db_state(project)
    code, _, err = cli(project, "pull", "team/damaged", capsys=capsys)
    one_error(code, err, f"{WEIGHTS} has sha256 {sha256(files[WEIGHTS])}", "records", "pull again")
    assert db_state(project) == before


def test_a_tag_the_hub_refuses_leaves_the_commit_recorded_without_it(standin, hf_home, tmp_path, tiny, capsys):
    project = make_project(tmp_path / "a")
    register_adapter(project, tiny)
    register_adapter(project, tiny, seed=1)
    assert cli(project, "push", "support@v1", "--repo", REPO, "--tag", "v3", capsys=capsys)[0] == 0
    code, _, err = cli(project, "push", "support@v2", "--repo", REPO, "--tag", "v3", capsys=capsys)
    head = standin.repos[REPO].branches["main"]
    one_error(code, err, f"pushed support@v2 to {REPO} as commit {head[:12]} (recorded)", "the tag exists already")
    with open_registry(project) as reg:
        assert [(p.commit_sha, p.tag) for p in reg.pushes("support@v2")] == [(head, None)]
    assert standin.repos[REPO].tags["v3"] != head  # still the first push's commit
