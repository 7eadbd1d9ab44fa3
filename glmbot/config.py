"""glmbot.toml -> typed settings.

Every section is a dataclass whose fields carry their help text. Unknown keys and values of the
wrong type or range raise `ConfigError` naming the key and the file, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glmbot.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_ENV = "GLMBOT_CONFIG"
DB_URL_ENV = "GLMBOT_DB_URL"
CONFIG_FILENAME = "glmbot.toml"
DOMAIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ModelSettings:
    base_model: str = field(default="builtin:tiny", metadata=_help(
        "'builtin:tiny', a local ChatGLM2-6B folder, or a Hub id such as THUDM/chatglm2-6b"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata=_help(
        "weights dtype; auto = bfloat16 on CUDA, float32 on CPU"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda | cuda:N"))
    quantization: Literal["none", "int8", "int4"] = field(default="none", metadata=_help(
        "quantize the base's linear layers on load (int8 ~0.55x, int4 ~0.3x the bf16 weight bytes at 6B); "
        "prefixes and adapters are unchanged"))

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class RegistrySettings:
    db_url: str = field(default="", metadata=_help(
        "SQLAlchemy URL; empty = SQLite at <adapters_dir>/registry.db; GLMBOT_DB_URL overrides"))
    adapters_dir: str = field(default="adapters", metadata=_help(
        "folder of adapter files, relative to glmbot.toml"))


@dataclass
class TrainSettings:
    pre_seq_len: int = field(default=128, metadata=_help("prefix length P (official: 128)"))
    prefix_projection: bool = field(default=False, metadata=_help(
        "reparameterise the prefix through a 2-layer MLP (official option; official default false)"))
    learning_rate: float = field(default=1e-1, metadata=_help("AdamW learning rate (official: 2e-2)"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    warmup_ratio: float = field(default=0.05, metadata=_help("share of steps with linear warm-up"))
    max_steps: int = field(default=600, metadata=_help("optimizer steps; 0 = use epochs (official: 3000)"))
    epochs: float = field(default=0.0, metadata=_help("passes over the data when max_steps = 0"))
    batch_size: int = field(default=16, metadata=_help("micro-batch size"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    max_source_length: int = field(default=64, metadata=_help("prompt tokens kept (official 64)"))
    max_target_length: int = field(default=128, metadata=_help("answer tokens kept (official 128)"))
    question_rewrites: int = field(default=4, metadata=_help(
        "extra wordings of each training question (synonyms, question words, openers) so the prefix "
        "answers rewordings too; 0 = the official recipe (your data only)"))
    history_share: float = field(default=1.0, metadata=_help(
        "share of the data's rows trained again behind an earlier round (another of its questions and answers), "
        "so a question asked mid-conversation gets its answer too; 0 = the official recipe (the data's own "
        "history only)"))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "recompute activations in backward to save memory"))
    compile: bool = field(default=True, metadata=_help(
        "on CUDA, torch.compile each block's dense parts (1.2x over eager measured on an H200); ignored on CPU"))
    seed: int = field(default=42, metadata=_help("random seed"))
    checkpoint_every: int = field(default=100, metadata=_help("steps between checkpoints; 0 = off"))
    runs_dir: str = field(default="runs", metadata=_help("where run folders go, relative to glmbot.toml"))

    def __post_init__(self) -> None:
        positive = ("pre_seq_len", "batch_size", "grad_accum", "max_source_length", "max_target_length")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps < 0 or self.epochs < 0:
            raise ValueError("max_steps and epochs must be >= 0")
        if not 0 <= self.question_rewrites <= 20:
            raise ValueError(f"question_rewrites must be in 0..20, got {self.question_rewrites}")
        if not 0 <= self.history_share <= 1:
            raise ValueError(f"history_share must be in [0, 1], got {self.history_share}")
        if self.max_steps == 0 and self.epochs == 0:
            raise ValueError("set max_steps or epochs (both are 0)")


LOOP_PERIOD = 8  # longest repeated piece, in tokens, that [generation] loop_stop looks for


@dataclass
class GenerationSettings:
    max_new_tokens: int = field(default=256, metadata=_help("tokens generated at most per answer"))
    do_sample: bool = field(default=True, metadata=_help(
        "sample (official default) or greedy; left unset on a builtin base, greedy (see builtin_greedy)"))
    temperature: float = field(default=0.8, metadata=_help("official chat default 0.8"))
    top_p: float = field(default=0.8, metadata=_help("official chat default 0.8"))
    top_k: int = field(default=0, metadata=_help("0 = off"))
    repetition_penalty: float = field(default=1.0, metadata=_help("1.0 = off"))
    loop_stop: int = field(default=32, metadata=_help(
        "an answer whose last N tokens are one piece of 1-8 tokens over and over ends there (finish reason "
        "loop; OpenAI's stop): greedy decoding that enters a loop never leaves it and would fill max_new_tokens; 0 = off"))
    max_length: int = field(default=8192, metadata=_help("prompt + answer tokens at most (official 8192)"))

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")
        if self.loop_stop != 0 and self.loop_stop < 2 * LOOP_PERIOD:
            raise ValueError(f"loop_stop must be 0 (off) or at least {2 * LOOP_PERIOD} tokens, got {self.loop_stop}")


@dataclass
class ServingSettings:
    prefix_cache_mib: float = field(default=512.0, metadata=_help(
        "device memory for cached prefix KV (3.5 MiB per P=128 adapter in bf16)"))
    max_batch_size: int = field(default=64, metadata=_help("rows decoded together at most"))
    prefill_tokens: int = field(default=2048, metadata=_help(
        "prompt tokens prefilled between two decode steps at most: longer prompts go in over several steps, so "
        "streams already decoding wait for one bounded forward (larger: sooner first tokens of long prompts, "
        "longer pauses for running streams)"))
    prefill_wait_steps: int = field(default=8, metadata=_help(
        "while streams decode, a new prompt may wait up to this many decode steps so that arrivals prefill "
        "together in one forward instead of one forward each; it goes at once when the waiting prompts are a "
        "quarter of the decoding rows or a full prefill_tokens budget, or when a decode step's captured graph can "
        "take it in (static shapes, as on CUDA; prefill_with_decode). 0 = prefill every arrival at the next step"))
    prefill_with_decode: bool = field(default=True, metadata=_help(
        "while streams decode, new prompts go through the same forward as their decode step: one pass over the "
        "weights for both (on CUDA a captured graph per prompt shape, up to 512 padded prompt tokens and 1,024 "
        "slots; beyond, or false, a prompt forward of its own right after the step; on the CPU an eager step). On "
        "an H100 it gave 26% more tokens/s end to end in a closed loop of 64 clients, and a first-token p50 / p99 "
        "of 23 / 45 against 80 / 173 ms under steady arrivals of 512-token prompts (docs/PERFORMANCE.md)"))
    engine_process: Literal["auto", "always", "never"] = field(default="auto", metadata=_help(
        "`glmbot serve` runs the engine in a process of its own, so the HTTP layer and the engine do not share one "
        "interpreter lock: 'auto' = on CUDA (at 200 streams one shared process gave 63% of the engine's tokens/s), "
        "'always', 'never'"))
    pin: list[str] = field(default_factory=list, metadata=_help("adapters kept resident, e.g. ['support']"))
    compile: bool = field(default=True, metadata=_help(
        "on CUDA, torch.compile each block's dense parts before the decode step is captured; ignored on CPU"))
    blas: Literal["auto", "cublas", "cublaslt"] = field(default="auto", metadata=_help(
        "on CUDA, the BLAS library for the model's matrix products, for the whole process: 'auto' times a decode "
        "step's products under cuBLAS and cuBLASLt once at start-up and keeps the faster (cuBLASLt was 2-2.9% "
        "faster on an H100, 4% slower a step on an H200 with an older torch; with deterministic = true, 'auto' is "
        "cuBLAS, untimed), or name one; ignored on CPU"))
    deterministic: bool = field(default=False, metadata=_help(
        "on CUDA, true keeps decode bit-reproducible (same inputs, same tokens, run after run); false uses "
        "cuDNN's grouped-KV decode attention (fp16/bf16 on Ampere or newer), ~4% faster per step on an H200, "
        "whose last bit varies from run to run and can flip a near-tied token; CPU decode is always deterministic"))
    prefix_history: Literal["trained", "all"] = field(default="trained", metadata=_help(
        "earlier rounds of a conversation a domain prefix sees (ChatGLM2's [Round N] prompt): 'trained' = the "
        "latest ones that ask something (not small talk alone), as many as its training rows had (one with [train] history_share; all for adapters that "
        "do not record it, e.g. imported ones); on a builtin base none, except for a short follow-up that leans on "
        "them (那周末呢？) or a prefix whose data has its own history; a message of small talk alone (greetings, "
        "thanks, 你是谁) that goes "
        "to the plain base none, nor does routed general chat on a builtin base (it answers best alone); 'all' = the "
        "whole conversation everywhere. Other plain-base turns see all"))
    closest_question: bool = field(default=True, metadata=_help(
        "on a builtin base, a question a domain's prefix answers alone that rewords one of the adapter's training "
        "questions (close by its words and their characters, and to no other) is asked as that training question: "
        "办张月卡要多少钱？ -> 月卡多少钱？, and a short follow-up as the one it asks with the question before it (那私教课呢？ "
        "after 办了卡能退吗？ -> 私教课可以退吗？); the route's detail names it. A real base always gets the user's words; "
        "false = always the user's words"))

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "prefill_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.prefill_wait_steps < 0:
            raise ValueError(f"prefill_wait_steps must be >= 0 (0 = no waiting), got {self.prefill_wait_steps}")


@dataclass
class RoutingSettings:
    fallback: str = field(default="base", metadata=_help(
        "where unmatched chat goes: 'base' (plain model) or a domain name"))
    min_score: float = field(default=0.25, metadata=_help(
        "classifier score under which the fallback is used"))
    sticky: bool = field(default=True, metadata=_help("keep a conversation on its first route"))
    topic_change_score: float = field(default=0.6, metadata=_help(
        "a message whose classifier score for another domain reaches this leaves the conversation's sticky domain "
        "for it (a keyword or pattern of another domain, and none of its own, always does); the score is the mean "
        "cosine of its nearest training prompts of that domain, so it grows with the domain's data; follow-ups such as "
        "'那要多久？' score well under it, and a message of one content word ('那周末呢？') never moves it on its score; "
        "1 = only keywords and patterns move a conversation"))
    leave_off_topic: bool = field(default=True, metadata=_help(
        "a routed conversation's message of two or more content words, none of them in its domain's training "
        "prompts, rules or the conversation so far ('帮我写一首关于春天的诗'; only where an earlier question shared a "
        "word with those prompts), or whose words are far closer to general chat ([routing] general_chat) than to "
        "its domain's prompts ('一个星期有几天' after '几天能取衣服？'), is routed afresh: to the fallback for that "
        "message alone, or to another domain it matches, which the conversation moves to (unless "
        "topic_change_score = 1); a domain asked for by name stays"))
    small_talk_to_base: bool = field(default=True, metadata=_help(
        "a message of small talk alone (你好, 谢谢, 你是谁) goes to the plain base model even under a domain "
        "requested by name; an exact version (domain@vN) always gets its adapter"))
    second_look: bool = field(default=True, metadata=_help(
        "a message whose words reach no domain is looked at again by the characters of its words too "
        "(打印卡住了 ~ 打印机卡纸怎么处理), beside a reference of general chat (glmbot/data/general_chat.txt): "
        "a domain gets it where it scores above nearly all that general chat does for the domain"))
    general_chat: bool = field(default=True, metadata=_help(
        "a message whose words are closer to a reference of general chat (glmbot/data/general_chat.txt) than to "
        "every domain's training prompts goes to the fallback: 一个星期有几天？ shares 几天 with 退货几天到账 but is chat"))
    fallback_reply: str = field(default="", metadata=_help(
        "a fixed answer, given without the model, to a message that reaches no domain and is not small talk "
        "(你们店在哪？ in words no domain's questions hold): '抱歉，这个问题我还答不上来，请联系工作人员。' instead of the "
        "plain base, which makes up shop details; empty = the plain base answers (fallback = 'base')"))


@dataclass
class PluginSettings:
    paths: list[str] = field(default_factory=lambda: ["plugins"], metadata=_help(
        "folders of plugin modules, relative to glmbot.toml"))
    enabled: list[str] = field(default_factory=list, metadata=_help("load only these; empty = all"))
    sensitive_words: list[str] = field(default_factory=list, metadata=_help(
        "words the sensitive-word plugin masks in answers"))
    options: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "per-plugin settings: [plugins.options.NAME] tables"))


@dataclass
class DomainSettings:
    description: str = field(default="", metadata=_help("what the domain covers"))
    data: str = field(default="", metadata=_help("training JSONL file or 'builtin:NAME'"))
    dev_data: str = field(default="", metadata=_help("dev JSONL file or 'builtin:NAME'"))
    format: Literal["auto", "chat", "advertisegen"] = field(default="auto", metadata=_help(
        "auto: read from the columns; chat: prompt/response/history columns; advertisegen: content/summary"))
    prompt_column: str = field(default="", metadata=_help("override the prompt column name"))
    response_column: str = field(default="", metadata=_help("override the answer column name"))
    history_column: str = field(default="", metadata=_help("override the history column name"))
    keywords: list[str] = field(default_factory=list, metadata=_help("routing: any keyword routes here"))
    patterns: list[str] = field(default_factory=list, metadata=_help("routing: regular expressions"))
    train: dict[str, Any] = field(default_factory=dict, metadata=_help("overrides of [train] keys"))

    def __post_init__(self) -> None:
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        unknown = set(self.train) - {f.name for f in dataclasses.fields(TrainSettings)}
        if unknown:
            raise ValueError(f"unknown [train] override(s) {sorted(unknown)}")


@dataclass
class ServerSettings:
    host: str = field(default="127.0.0.1", metadata=_help(
        "address `glmbot serve` binds; any non-loopback address needs api_keys"))
    port: int = field(default=8000, metadata=_help("TCP port (0 = any free port)"))
    api_keys: list[str] = field(default_factory=list, metadata=_help(
        "Bearer keys clients must send; GLMBOT_API_KEYS (comma-separated) adds more; empty = no key on loopback"))
    max_body_bytes: int = field(default=1 << 20, metadata=_help("largest request body accepted (413 above)"))
    max_tokens_limit: int = field(default=2048, metadata=_help("largest max_tokens a request may ask for (400 above)"))
    log_conversations: bool = field(default=True, metadata=_help(
        "write each HTTP turn to the registry's conversation log"))

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_body_bytes <= 0 or self.max_tokens_limit <= 0:
            raise ValueError(f"max_body_bytes and max_tokens_limit must be > 0, got {self.max_body_bytes} and "
                             f"{self.max_tokens_limit}")
        if any(not key.strip() for key in self.api_keys):
            raise ValueError("api_keys holds an empty key; remove it")


RAY_ADDRESS_RE = re.compile(r"|auto|local|ray://[^\s/]+|[^\s/:]+:\d{1,5}")


@dataclass
class RaySettings:
    address: str = field(default="", metadata=_help(
        "'' = start Ray on this machine; 'auto' = the cluster this machine belongs to (ray start); "
        "'ray://HEAD:10001' (Ray Client) or 'HEAD:6379'"))
    replicas: int = field(default=1, metadata=_help("engine replicas when autoscaling is off (max_replicas = 0)"))
    min_replicas: int = field(default=1, metadata=_help("autoscaling: fewest replicas (used when max_replicas > 0)"))
    max_replicas: int = field(default=0, metadata=_help("autoscaling: most replicas; 0 = a fixed number (replicas)"))
    target_ongoing_requests: float = field(default=32.0, metadata=_help(
        "autoscaling: requests in flight per replica that Ray Serve aims for"))
    num_cpus: float = field(default=1.0, metadata=_help("CPUs reserved per replica"))
    num_gpus: float | Literal["auto"] = field(default="auto", metadata=_help(
        "GPUs per replica: 'auto' = 1 when the cluster has GPUs and [model] device is not cpu, else 0; "
        "at most 1 (one engine drives one GPU); a fraction shares a GPU between replicas"))
    memory_gib: float = field(default=0.0, metadata=_help("host memory reserved per replica; 0 = none"))
    max_adapters_per_replica: int = field(default=16, metadata=_help(
        "domains a replica keeps hot (Ray's multiplexing LRU); requests for a domain go to replicas that hold it"))
    max_ongoing_requests: int = field(default=0, metadata=_help(
        "requests a replica takes at once; 0 = [serving] max_batch_size (its engine's batch)"))
    ingress_replicas: int = field(default=1, metadata=_help(
        "replicas of the HTTP ingress (routing, auth, streaming; no model)"))
    app_name: str = field(default="glmbot", metadata=_help("the Ray Serve application's name"))

    def __post_init__(self) -> None:
        if not RAY_ADDRESS_RE.fullmatch(self.address):
            raise ValueError(f"address = {self.address!r} is not a Ray address: use '' (a local Ray), 'auto', "
                             "'ray://HEAD:10001' or 'HEAD:6379'")
        for name in ("replicas", "max_adapters_per_replica", "ingress_replicas"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_replicas < 0 or self.min_replicas < 0 or self.max_ongoing_requests < 0:
            raise ValueError(f"min_replicas, max_replicas and max_ongoing_requests must be >= 0, got "
                             f"{self.min_replicas}, {self.max_replicas} and {self.max_ongoing_requests}")
        if self.max_replicas and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas = {self.min_replicas} is above max_replicas = {self.max_replicas}")
        if self.target_ongoing_requests <= 0 or self.num_cpus < 0 or self.memory_gib < 0:
            raise ValueError(f"target_ongoing_requests must be > 0 and num_cpus, memory_gib >= 0, got "
                             f"{self.target_ongoing_requests}, {self.num_cpus}, {self.memory_gib}")
        if self.num_gpus != "auto" and not 0 <= self.num_gpus <= 1:
            raise ValueError(f"num_gpus = {self.num_gpus} must be 'auto' or in [0, 1]: a replica runs one engine on "
                             "one GPU; for more GPUs raise replicas (or max_replicas)")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.app_name):
            raise ValueError(f"app_name = {self.app_name!r} must be 1-64 letters, digits, '_' or '-'")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > 0


@dataclass
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    domains: dict[str, DomainSettings] = field(default_factory=dict)
    # Where relative paths are resolved from (the folder of the file, or the cwd).
    root: Path = field(default_factory=Path.cwd, metadata={"internal": True})
    source: str = field(default="<defaults>", metadata={"internal": True})

    def path(self, value: str) -> Path:
        """Resolve a path setting against the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def adapters_dir(self) -> Path:
        return self.path(self.registry.adapters_dir)

    @property
    def db_url(self) -> str:
        url = os.environ.get(DB_URL_ENV) or self.registry.db_url
        return url or f"sqlite:///{self.adapters_dir / 'registry.db'}"

    def train_for(self, domain: str | None = None, **overrides: Any) -> TrainSettings:
        """[train] with the domain's overrides, then explicit ones (None values are ignored)."""
        values = dataclasses.asdict(self.train)
        if domain is not None and domain in self.domains:
            values.update(self.domains[domain].train)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return TrainSettings(**values)
        except ValueError as exc:
            raise ConfigError(f"bad training setting for domain {domain!r}: {exc}") from None


def _check_type(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check `value` against a (simple) annotation; ints are accepted where floats are."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            choices = ", ".join(repr(c) for c in typing.get_args(annotation))
            raise ConfigError(f"{source}: {key} = {value!r} is not one of {choices}")
        return value
    if origin in (list, dict):
        if not isinstance(value, origin):
            raise ConfigError(f"{source}: {key} must be a {origin.__name__}, got {value!r}")
        if origin is list:
            (item_type,) = typing.get_args(annotation)
            return [_check_type(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key} has the wrong type: {value!r}")
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{source}: {key} must be {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    """Build dataclass `cls` from a TOML table, refusing unknown keys by name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown key {prefix}{unknown[0]!r} (known keys: {known})")
    kwargs = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{prefix}{name}] must be a table")
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _check_type(value, annotation, f"{prefix}{name}", source)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{source}: [{prefix.rstrip('.') or 'top'}] {exc}") from None


def settings_from_dict(data: dict, *, root: Path | None = None, source: str = "<dict>") -> Settings:
    """Typed settings from an already parsed TOML document."""
    data = dict(data)
    domains_raw = data.pop("domains", {})
    if not isinstance(domains_raw, dict):
        raise ConfigError(f"{source}: [domains] must be a table of tables")
    settings: Settings = _build(Settings, data, "", source)
    for name, table in domains_raw.items():
        if not DOMAIN_NAME_RE.fullmatch(name):
            raise ConfigError(
                f"{source}: domain name {name!r} is invalid: use lowercase letters, digits, '-' and '_'")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [domains.{name}] must be a table")
        settings.domains[name] = _build(DomainSettings, table, f"domains.{name}.", source)
    settings.root = root if root is not None else Path.cwd()
    settings.source = source
    generation = data.get("generation")
    return builtin_greedy(settings, generation if isinstance(generation, dict) else {})


def builtin_greedy(settings: Settings, generation: dict) -> Settings:
    """Greedy answers on a builtin base unless [generation] sets do_sample: its 9.6M parameters drift
    into noise when sampled (a newcomer's project, whose glmbot.toml `domains add` wrote without a
    [generation] table, answered one question three ways, one of them 可以 repeated 250 times)."""
    if "do_sample" not in generation and settings.model.base_model.startswith("builtin:"):
        settings.generation = dataclasses.replace(settings.generation, do_sample=False)
    return settings


def find_config_file(start: Path | None = None) -> Path | None:
    """$GLMBOT_CONFIG, else the nearest glmbot.toml in `start` (cwd) or a parent folder."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={env} does not exist: point it at a glmbot.toml file")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    return None


def no_config_note(settings: Settings) -> str | None:
    """What to say beside an unknown domain when no glmbot.toml was found (settings are the defaults): a
    newcomer in another folder otherwise read "unknown domain 'yoga'" about the domain they had just trained."""
    if settings.source != "<defaults>":
        return None
    return (f"no glmbot.toml in {Path.cwd()} or a folder above it, so glmbot runs on its defaults (your domains "
            f"and adapters are not seen): run it in your project's folder, or pass --config PATH/glmbot.toml "
            f"(ChatGlmbot(config=...), or set {CONFIG_ENV})")


def sample_domains() -> dict[str, DomainSettings]:
    """The sample domains shipped in the package (support, ads: glmbot/data/samples/domains.toml), which
    `glmbot demo` trains where no glmbot.toml defines them."""
    file = Path(__file__).parent / "data" / "samples" / "domains.toml"
    return settings_from_dict(tomllib.loads(file.read_text(encoding="utf-8")), source=str(file)).domains


def load_settings(path: str | Path | None = None) -> Settings:
    """Load glmbot.toml (explicit path, $GLMBOT_CONFIG, or the nearest one); defaults if none."""
    file = Path(path) if path is not None else find_config_file()
    if file is None:
        return builtin_greedy(Settings(), {})
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return settings_from_dict(data, root=file.resolve().parent, source=str(file))
