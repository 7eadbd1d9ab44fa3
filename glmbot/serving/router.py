"""Route each chat message to a domain's prefix, or to the plain base model.

The first stage that decides wins, and every decision carries its reason and score:
explicit domain/adapter > the conversation's sticky route > plugin routers > keyword rules >
regex rules > a TF-IDF classifier over each domain's training prompts (a message that is one of them
word for word goes to its domain, even one of stop-words alone such as "你们在哪里？") > a second look at a
message no domain's words reach, by the characters of its words too, against a reference of general chat
([routing] second_look: 打印卡住了 ~ 打印机卡纸怎么处理) > fallback.
General chat falls through to the fallback (the plain base model by default), so greetings
never reach a prefix that may have forgotten how to say hello: a message of greetings, thanks or
questions about the assistant alone ("谢谢", "好的，再见", "你是谁") skips a conversation's sticky domain too, while a follow-up that asks
something ("那运费呢？", "怎么办？") stays with it; a message with another domain's keyword or pattern, and
none of its own, a classifier score of [routing] topic_change_score for another domain (with two or more
content words: "那周末呢？" stays), or one of
its training prompts asked as it is, moves a routed conversation to that domain (one asked for by name stays), and
one of two or more content words that shares none with the domain's training prompts or the conversation so far
("帮我写一首关于春天的诗"), in a conversation those prompts describe (an earlier question shares a word), is routed afresh: to the fallback for that message alone (later follow-ups still reach
the domain), or to another domain it scores min_score for, which the conversation then moves to (not with
topic_change_score = 1). A
conversation the router does not remember is replayed from the history sent with the message, so stateless
clients (the OpenAI API sends every earlier message each time) get the same routes. Under a domain requested by name (`glmbot chat
--domain hr`, HTTP model "hr") such a message goes to the plain base as well (reason small_talk,
[routing] small_talk_to_base); an exact version (hr@v2) always gets its adapter.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from glmbot.config import DOMAIN_NAME_RE, Settings
from glmbot.errors import ConfigError, UnknownDomainError, unknown_domain
from glmbot.segment import jieba_module

log = logging.getLogger(__name__)

BASE = "base"  # the plain base model, in `explicit` and `fallback`
REASONS = ("explicit", "small_talk", "sticky", "plugin", "keyword", "pattern", "classifier", "second_look", "fallback")
# Set by the engine, not the router: the routed adapter's files are damaged, so the request went to
# an earlier intact version of its domain, or to the plain base model (RouteDecision.damaged names it).
DAMAGED_FALLBACK = "damaged_fallback"
# Measured on glmbot/data/samples/routing_heldout.jsonl (support/ads training prompts, ads keywords):
# accuracy is flat at 55/60 for min_score 0.20..0.30; 0.25 sits in the middle of that plateau.
DEFAULT_MIN_SCORE = 0.25
# A domain scores the mean cosine of its TOP_K nearest prompts, so one short prompt sharing a single
# everyday word ("你喜欢什么颜色？" vs "颜色买错了可以换吗？") is not enough; 2 (not 3) keeps a message
# equal to a training prompt of a domain without paraphrases at 0.5, above min_score.
TOP_K = 2
# A message this close to one training prompt is that prompt (give or take a particle or a stop-word).
SAME_PROMPT_COSINE = 0.9
# A routed conversation's message of at least this many content words of two or more characters
# (jieba leaves unknown words in single characters: 到账 -> 到/账), follow-up words such as 一点 not
# counted, none of its words in the domain's training prompts, its rules or the conversation so far,
# is routed afresh ([routing] leave_off_topic). Measured on the 7 bench and tuning domains (2026-12-06;
# each domain's 10 paraphrases and 25 general-chat messages asked behind its first training round):
# 68/70 paraphrases stay with their domain and 128/175 general-chat messages go on (without the rule:
# 70/70 and 7/175; counting single characters too, 68/70 and 147/175, but "多久到账" after "我想退货" left).
OFF_TOPIC_WORDS = 2
# Such a message whose words share some with the domain's prompts leaves too when the general-chat reference
# scores it this many times the domain ("一个星期有几天" after "几天能取衣服？": 0.72 against 0.18 through 几天);
# for this comparison words of one character count too (帮我写一首诗: 写, 一首, 诗).
# bench/routing_bench.py --split dev (tuning domains, second message of a conversation; 2026-12-06): rewordings
# kept / general chat to the base: rule off 37/40, 111/160; x1 33/40, 132/160; x1.5 35/40, 131/160; x2 37/40,
# 129/160; x3 37/40, 124/160.
GENERAL_OVER_OWN = 2.0
OFF_TOPIC = "off topic"  # _topic_change's answer for such a message
# Words of a follow-up that ask for more of the same ("再写一个吧", "短一点", "能不能更活泼一些"): not counted
# among those OFF_TOPIC_WORDS.
_FOLLOW_UP_WORDS = frozenset((
    "再 再来 来 又 还 还有 还要 还能 别的 其他 其它 一点 一些 一条 一句 一个 一次 一遍 更 更加 再次 重新 换 换个 "
    "关于 有关 再说 说说 详细 具体 仔细 简单 简短 短 长 不能 能不能 可不可以 行不行 那要 那么 然后 这样 那样 这种 那种 怎么样 多久 多长时间 多少钱").split())
STICKY_CAPACITY = 10_000
GENERAL_CHAT_FILE = Path(__file__).resolve().parents[1] / "data" / "general_chat.txt"
# The second look ([routing] second_look, SecondLook), chosen on bench/routing_bench.py's tuning domains and
# first held-out set (2026-12-06): each character of a content word counts as a feature of this weight
# (0.5 and 2 routed fewer rewordings or more general chat); a domain needs this share of min_score at least
# (0.15 of the default 0.25)...
CHAR_WEIGHT = 1.0
SECOND_MIN_SHARE = 0.6
# ...and more than all but this share of the general-chat reference scores for it. Held-out rewordings reaching
# their domain in a project of its own, and general-chat messages sent to it, tuning domains / first held-out
# set: 0.01 29/40, 1/160 / 33/54, 2/300; 0.02 34/40, 1/160 / 34/54, 2/300; 0.03 34/40, 1/160 / 35/54, 4/300;
# no such bar: beside the shop's 225 support questions, 68 of 300 general-chat messages went to a domain (26 by
# words alone; 29 with the bar).
GENERAL_SHARE = 0.02

# Greeting phrases, questions to the assistant about itself and everyday chit-chat are cut out of the text before
# segmentation (jieba splits 晚上好 into 晚上/好, and 晚上 alone is a real word); a message left with
# no content words goes to the fallback (the plain base, which a domain prefix may have made forget
# who it is: "你是谁" after a domain question got the prefix's garble).
# Chit-chat the plain base answers (scripts/small_talk.py); a prefix answered 今天天气怎么样 with its domain's garble.
_CHIT_CHAT_PHRASES = (
    "今天天气怎么样", "天气怎么样", "天气如何", "天气好吗", "明天会下雨吗", "会下雨吗", "下雨了吗", "现在几点了",
    "今天几号", "今天星期几", "你好吗", "最近怎么样", "你几岁了", "我好无聊", "陪我聊聊天", "陪我聊天")
_GREETINGS = re.compile("|".join(sorted((
    "你好", "您好", "你们好", "大家好", "哈喽", "哈啰", "哈罗", "在吗", "在不在", "有人吗", "谢谢", "多谢",
    "感谢", "再见", "拜拜", "早上好", "上午好", "中午好", "下午好", "晚上好", "早安", "午安", "晚安", "好的",
    "嗯嗯", "哦哦", "嗨",
    "你是谁", "您是谁", "你叫什么", "你叫什么名字", "你是什么", "你是机器人吗", "你是人工智能吗",
    "你能做什么", "你会做什么", "你会干什么", "你能干什么", "介绍一下你自己", "自我介绍一下",
    *_CHIT_CHAT_PHRASES), key=len, reverse=True)))
_CHIT_CHAT = re.compile("|".join(sorted(_CHIT_CHAT_PHRASES, key=len, reverse=True)))
# jieba part-of-speech tags of words that only say when or where: 今天, 周末 (t), 北京 (ns), 3号 (m), 楼下 (s, f).
# Beside a chit-chat question they ask nothing of a domain: "今天北京天气怎么样" went to the support prefix
# (0.56 through 今天 and 北京 of two shop questions) and got its garble.
_WHEN_WHERE_TAGS = frozenset(("t", "tg", "ns", "m", "mq", "s", "f"))
_STOP_WORDS = frozenset((
    "的 了 吗 呢 吧 啊 呀 嘛 哦 嗯 啦 喽 么 呗 哈 喂 我 你 您 他 她 它 我们 你们 他们 咱们 是 在 有 和 与 就 也 都 还 很 "
    "这 那 这个 那个 这些 那些 一下 请 请问 可以 能 会 要 想 给 帮 帮我 帮忙 把 被 让 对 吗 什么 怎么 怎么办 "
    "如何 为什么 哪 哪里 哪儿 多少 几 一个 个 好 不 没 没有 自己 现在 就是 还是 或者 如果 因为 所以 但是 "
    "hello hi hey thanks thank you bye ok okay please the a an is are to of and").split())
_CONTENT_CHAR = re.compile(r"\w")  # a token with no letter, digit or CJK character is punctuation
# Characters that ask nothing by themselves (不会, 有没有, 会不会): not character features of the second look.
_FUNCTION_CHARS = frozenset("".join(w for w in _STOP_WORDS if not w.isascii())
                            + "不会有没是能可以要想就还也都很这那个一么什怎几多少哪吗呢吧了的得地着过在和与或把被让给对")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_CHAR_MARK = "\x00"  # a character feature's key: the mark, then the character (a word is never one)

LEANING_CHARS = 8  # a message this short that opens with 那 or ends in 呢 leans on the rounds before it


def content_tokens(text: str) -> list[str]:
    """jieba words of `text` without greetings, stop-words and punctuation (case-folded); beside a
    chit-chat question (天气怎么样), without words of time and place too."""
    folded = text.casefold()
    cut = _GREETINGS.sub(" ", folded)
    jieba = jieba_module()
    words = [w for w in jieba.lcut(cut) if _CONTENT_CHAR.search(w) and w not in _STOP_WORDS]
    if words and _CHIT_CHAT.search(folded):
        import jieba.posseg  # only here: most messages never need the part-of-speech tagger

        when_where = {p.word for p in jieba.posseg.lcut(cut) if p.flag in _WHEN_WHERE_TAGS}
        words = [w for w in words if w not in when_where]
    return words


def leans_back(text: str) -> bool:
    """True for a short message that takes its topic from the rounds before it: "那周末呢？", "网课呢",
    "那个多少钱？", "还有呢", "可以吗？" (at most LEANING_CHARS letters opening with 那/还有 or pointing
    back with 这个/那个/它, a word or two and 呢, or no content word at all; "会员卡怎么办理呢？" and
    "上一次课要花多少钱？" ask for themselves)."""
    letters = _letters(text)
    return len(letters) <= LEANING_CHARS and (
        letters.startswith(("那", "还有")) or any(w in letters for w in ("这个", "那个", "它"))
        or (letters.endswith("呢") and len(letters) <= 5) or not content_tokens(text))


def small_talk_only(text: str) -> bool:
    """True for a message of greetings, thanks, farewells, questions about the assistant itself or
    everyday chit-chat (weather, the time) and nothing else that asks anything."""
    return _GREETINGS.search(text.casefold()) is not None and not content_tokens(text)


# Notes the engine appends to a route's detail about the message itself (the chat's status line keeps them).
FALLBACK_REPLY_NOTE = "answered with [routing] fallback_reply"
CLOSEST_QUESTION_NOTE = "asked as its training question"


def fallback_reply(decision: RouteDecision, text: str, reply: str) -> str | None:
    """[routing] fallback_reply, where the engine gives it instead of the plain base: a message the router
    sent to the plain base for want of a domain that is not small talk; else None (also for an empty reply)."""
    if reply and decision.reason == "fallback" and decision.domain is None and not small_talk_only(text):
        return reply
    return None


def small_talk_route(decision: RouteDecision, text: str) -> RouteDecision:
    """A domain requested by name (not domain@vN) does not get a message of small talk alone: its prefix
    was trained on the domain's questions, and on the builtin base it garbled "谢谢" where the plain
    base answers "不客气". An exact version is left to its adapter (someone evaluating it)."""
    if decision.reason != "explicit" or decision.domain is None or decision.adapter is not None:
        return decision
    if not small_talk_only(text):
        return decision
    return RouteDecision(None, None, "small_talk", 1.0, detail=(
        f"small talk alone under domain {decision.domain!r}: plain base model ([routing] small_talk_to_base; "
        f"ask for {decision.domain}@vN to send it to the adapter)"))


@dataclass(frozen=True)
class RouteDecision:
    """Where one message goes: a domain's prefix (or None = the plain base), and why."""

    domain: str | None                # None = the plain base model
    adapter: str | None = None        # e.g. "support@v2"; None = the domain's active adapter
    reason: str = "fallback"          # one of REASONS
    score: float = 0.0                # confidence of the deciding stage (1.0 for rules and explicit)
    scores: dict[str, float] = field(default_factory=dict, hash=False)  # classifier score per domain
    detail: str = ""                  # short human text, e.g. the keyword matched
    damaged: str | None = None        # reason damaged_fallback: the damaged adapter it replaced, e.g. "hr@v2"

    def __post_init__(self) -> None:
        if self.reason not in (*REASONS, DAMAGED_FALLBACK):
            raise ValueError(f"RouteDecision reason {self.reason!r} is not one of {', '.join(REASONS)}")


@dataclass
class DomainProfile:
    """What the router knows about one domain."""

    name: str
    keywords: list[str] = field(default_factory=list)   # any of them in a message routes here
    patterns: list[str] = field(default_factory=list)   # regular expressions, searched in the message
    prompts: list[str] = field(default_factory=list)    # training prompts the classifier learns from
    adapter_version: int | None = None                  # the active adapter's version, if known

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not DOMAIN_NAME_RE.fullmatch(self.name):
            raise ConfigError(f"routing profile name {self.name!r} is not a valid domain name: "
                              "use lowercase letters, digits, '-' and '_'")
        if self.name == BASE:
            raise ConfigError(f"domain name {BASE!r} is reserved for the plain base model in routing; "
                              "rename the domain (e.g. 'general')")
        for keyword in self.keywords:
            if not isinstance(keyword, str) or not keyword.strip():
                raise ConfigError(f"domain {self.name!r}: keyword {keyword!r} is empty; remove it "
                                  "(an empty keyword would match every message)")


class PromptClassifier:
    """TF-IDF nearest-prompt classifier: a domain scores the mean cosine of its TOP_K closest prompts.

    Cosine similarity is bounded in 0..1 whatever the corpus size, so one `min_score` works for
    small and large domains; words never seen in training get the highest IDF, which pulls the
    score of off-topic messages towards 0.
    """

    def __init__(self, prompts_by_domain: dict[str, list[str]], top_k: int = TOP_K, char_weight: float = 0.0,
                 reference: Sequence[str] = ()) -> None:
        """reference: messages of general chat, indexed like a domain's prompts (so their words weigh in
        the IDF) but scored apart: the third value of `scores_and_nearest`."""
        self.domains = list(prompts_by_domain)
        self.top_k = top_k
        self.char_weight = char_weight
        docs: list[tuple[str, list[str]]] = []
        self._doc_text: list[str] = []
        for domain, prompts in {**prompts_by_domain, **({BASE: list(reference)} if reference else {})}.items():
            for prompt in dict.fromkeys(prompts):  # repeated prompts would count twice in the top-k
                tokens = content_tokens(prompt)
                if tokens:
                    docs.append((domain, tokens))
                    self._doc_text.append(prompt)
        document_frequency: Counter[str] = Counter()
        for _, tokens in docs:
            document_frequency.update(set(self.features(tokens)))
        n = len(docs)
        # Smoothed IDF (as scikit-learn); unseen words get the largest value.
        self._idf = {t: math.log((1 + n) / (1 + df)) + 1 for t, df in document_frequency.items()}
        self._unseen_idf = math.log(1 + n) + 1
        self._doc_domain = [domain for domain, _ in docs]
        self._domain_size = Counter(self._doc_domain)
        # Inverted index: token -> [(document, weight of the L2-normalised TF-IDF vector)].
        self._postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for index, (_, tokens) in enumerate(docs):
            for token, weight in self._unit_vector(tokens).items():
                self._postings[token].append((index, weight))

    def features(self, tokens: list[str]) -> Counter[str]:
        """The words, and with char_weight each of their CJK characters but function characters (锁 and
        锁定 share 锁, 打印 and 打印机 share 打 and 印)."""
        features: Counter[str] = Counter(tokens)
        if self.char_weight:
            for token in tokens:
                for char in _CJK.findall(token):
                    if char not in _FUNCTION_CHARS:
                        features[_CHAR_MARK + char] += self.char_weight
        return features

    def _unit_vector(self, tokens: list[str]) -> dict[str, float]:
        vector = {t: count * self._idf.get(t, self._unseen_idf) for t, count in self.features(tokens).items()}
        norm = math.sqrt(sum(w * w for w in vector.values()))
        return {t: w / norm for t, w in vector.items()}

    def scores(self, text: str) -> dict[str, float]:
        """Score 0..1 of every domain for `text`; all 0 when it has no content words."""
        return self.token_scores(content_tokens(text))

    def token_scores(self, tokens: list[str]) -> dict[str, float]:
        """Score 0..1 of every domain for already extracted content tokens."""
        return self.scores_and_nearest(tokens)[0]

    def scores_and_nearest(self, tokens: list[str]) -> tuple[dict[str, float], dict[str, float], float]:
        """token_scores, the cosine of every domain's single closest prompt (1.0: the message is one of
        them), and the reference's score as a domain's (0 without one), from one pass over the index."""
        cosines = self._cosines(tokens)
        scores, nearest = {}, {}
        for domain in (*self.domains, BASE):
            k = min(self.top_k, self._domain_size[domain]) or 1
            scores[domain] = sum(cosines[domain][:k]) / k
            nearest[domain] = cosines[domain][0] if cosines[domain] else 0.0
        general, _ = scores.pop(BASE), nearest.pop(BASE)
        return scores, nearest, general

    def has_word(self, domain: str, token: str) -> bool:
        """Whether one of `domain`'s prompts holds the word `token` (read from the index)."""
        return any(self._doc_domain[index] == domain for index, _ in self._postings.get(token, ()))

    def closest_prompts(self, tokens: list[str], n: int = 2) -> list[tuple[str, float]]:
        """The `n` prompts of any domain closest to `tokens` and their cosines, highest first (prompts
        sharing no word left out)."""
        ranked = sorted(self._dots(tokens).items(), key=lambda item: -item[1])[:n]
        return [(self._doc_text[index], cosine) for index, cosine in ranked]

    def _dots(self, tokens: list[str]) -> dict[int, float]:
        """The cosine of every prompt that shares a feature with `tokens`, by prompt index."""
        dots: dict[int, float] = defaultdict(float)
        for token, weight in (self._unit_vector(tokens).items() if tokens else ()):
            for index, doc_weight in self._postings.get(token, ()):
                dots[index] += weight * doc_weight
        return dots

    def _cosines(self, tokens: list[str]) -> dict[str, list[float]]:
        """Each domain's cosines with `tokens`, highest first (prompts sharing no word left out)."""
        dots = self._dots(tokens)
        nearest: dict[str, list[float]] = defaultdict(list)
        for index, cosine in dots.items():
            nearest[self._doc_domain[index]].append(cosine)
        return {domain: sorted(nearest[domain], reverse=True) for domain in (*self.domains, BASE)}


class StickyRoutes:
    """Bounded, thread-safe memory of each conversation's route; the least recently used goes first."""

    def __init__(self, capacity: int = STICKY_CAPACITY) -> None:
        if capacity <= 0:
            raise ValueError(f"sticky capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self._routes: OrderedDict[str, RouteDecision] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conversation_id: str) -> RouteDecision | None:
        with self._lock:
            decision = self._routes.get(conversation_id)
            if decision is not None:
                self._routes.move_to_end(conversation_id)
            return decision

    def put(self, conversation_id: str, decision: RouteDecision) -> None:
        with self._lock:
            self._routes[conversation_id] = decision
            self._routes.move_to_end(conversation_id)
            while len(self._routes) > self.capacity:
                self._routes.popitem(last=False)

    def forget(self, conversation_id: str) -> bool:
        """Drop one conversation's route; True if there was one."""
        with self._lock:
            return self._routes.pop(conversation_id, None) is not None

    def keep_domains(self, names: Iterable[str]) -> None:
        """Drop routes to domains not in `names` (routes to the plain base stay)."""
        keep = set(names)
        with self._lock:
            for cid in [c for c, d in self._routes.items() if d.domain is not None and d.domain not in keep]:
                del self._routes[cid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._routes)


PluginRouter = Callable[[str, Any], "RouteDecision | None"]


@dataclass(frozen=True)
class _RoutingTable:
    """Everything derived from the profiles; replaced whole, so readers never see half an update."""

    profiles: dict[str, DomainProfile]
    keywords: list[tuple[str, str, str]]               # (domain, keyword, case-folded), longest first
    patterns: list[tuple[str, str, re.Pattern[str]]]  # (domain, source, compiled)
    classifier: PromptClassifier
    prompts: dict[str, str | None]  # a training prompt's letters and digits -> its domain (None: several domains)
    second: SecondLook | None = None  # [routing] second_look


class Look(NamedTuple):
    """What the second look saw of a message: the closest domain, its score, the general chat's, and the
    score that domain needs."""

    domain: str
    score: float
    general: float
    need: float

    @property
    def routes(self) -> bool:
        return self.score >= self.need and self.score > self.general


class SecondLook:
    """A second look at a message whose words reach no domain ([routing] second_look): its words and the
    characters of its words (打印卡住了 and 打印机卡纸怎么处理？ share no word) against
    each domain's training prompts and a reference of general chat (glmbot/data/general_chat.txt). A
    domain gets the message where it scores SECOND_MIN_SHARE x min_score, more than the general chat does,
    and more than all but GENERAL_SHARE of the reference's messages score for it: so a domain of 225 broad
    shop questions, which everyday chat shares characters with, needs a higher score than a 30-line FAQ."""

    def __init__(self, prompts_by_domain: dict[str, list[str]]) -> None:
        self.classifier = PromptClassifier(prompts_by_domain, char_weight=CHAR_WEIGHT, reference=general_chat())
        reference = [self.classifier.token_scores(tokens) for tokens in _general_chat_tokens()]
        self.thresholds: dict[str, float] = {}
        for domain in prompts_by_domain:
            ranked = sorted(scores[domain] for scores in reference)
            self.thresholds[domain] = ranked[min(len(ranked) - 1, int((1 - GENERAL_SHARE) * len(ranked)))]
        # A stateless client's every request replays the same earlier questions (Router._replayed).
        self._look = lru_cache(maxsize=STICKY_CAPACITY)(self._look_uncached)

    def look(self, tokens: list[str], min_score: float) -> Look:
        return self._look(tuple(tokens), min_score)

    def _look_uncached(self, tokens: tuple[str, ...], min_score: float) -> Look:
        scores, _, general = self.classifier.scores_and_nearest(list(tokens))
        best = max(scores, key=lambda name: scores[name])
        return Look(best, scores[best], general, max(SECOND_MIN_SHARE * min_score, self.thresholds[best]))


def _build_table(profiles: Iterable[DomainProfile], second_look: bool = False,
                 general: bool = False) -> _RoutingTable:
    by_name: dict[str, DomainProfile] = {}
    keywords, patterns = [], []
    for profile in profiles:
        if profile.name in by_name:
            raise ConfigError(f"domain {profile.name!r} is listed twice in the routing profiles; keep one")
        # A copy, so a caller editing its profile later cannot desynchronise the compiled table.
        profile = replace(profile, keywords=list(profile.keywords), patterns=list(profile.patterns),
                          prompts=list(profile.prompts))
        by_name[profile.name] = profile
        keywords += [(profile.name, keyword, keyword.casefold()) for keyword in profile.keywords]
        for source in profile.patterns:
            try:
                patterns.append((profile.name, source, re.compile(source)))
            except re.error as exc:
                raise ConfigError(f"domain {profile.name!r}: pattern {source!r} is not a valid regular "
                                  f"expression: {exc}") from None
    # The longest matching keyword is the most specific one; the stable sort keeps profile order on ties.
    keywords.sort(key=lambda entry: -len(entry[1]))
    classifier = PromptClassifier({name: p.prompts for name, p in by_name.items()},
                                  reference=general_chat() if general and by_name else ())
    prompts: dict[str, str | None] = {}
    for name, profile in by_name.items():
        for prompt in profile.prompts:
            key = _letters(prompt)
            if key:
                prompts[key] = name if prompts.get(key, name) == name else None
    second = SecondLook({name: p.prompts for name, p in by_name.items()}) if second_look and by_name else None
    return _RoutingTable(by_name, keywords, patterns, classifier, prompts, second)


class Router:
    """Decide, for each message, which domain's prefix answers it (see the module docstring for the order)."""

    def __init__(self, profiles: list[DomainProfile], *, fallback: str = BASE,
                 min_score: float = DEFAULT_MIN_SCORE, sticky: bool = True,
                 sticky_capacity: int = STICKY_CAPACITY, small_talk_to_base: bool = True,
                 topic_change_score: float = 0.6, leave_off_topic: bool = True, second_look: bool = True,
                 general_chat: bool = True) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"routing.min_score must be in 0..1 (a cosine similarity), got {min_score}")
        if not 0.0 <= topic_change_score <= 1.0:
            raise ConfigError(f"routing.topic_change_score must be in 0..1 (1 = only keywords and patterns move a "
                              f"conversation), got {topic_change_score}")
        self.topic_change_score = topic_change_score
        self.leave_off_topic = leave_off_topic
        self.fallback = fallback
        self.min_score = min_score
        self.sticky = sticky
        self.small_talk_to_base = small_talk_to_base
        self.second_look = second_look
        self.general_chat = general_chat
        self._table = _build_table(profiles, second_look, general_chat)
        self._check_fallback(self._table)
        self._memory = StickyRoutes(sticky_capacity)
        self._plugins: tuple[PluginRouter, ...] = ()
        self._lock = threading.Lock()  # serialises writers; readers take one snapshot of _table

    @classmethod
    def from_settings(cls, settings: Settings, prompts_by_domain: dict[str, list[str]],
                      versions: dict[str, int] | None = None) -> Router:
        """A router for glmbot.toml's [domains] and [routing], plus domains only the registry knows."""
        versions = versions or {}
        names = list(settings.domains)
        names += sorted((set(prompts_by_domain) | set(versions)) - set(names))
        profiles = []
        for name in names:
            domain = settings.domains.get(name)
            profiles.append(DomainProfile(
                name, keywords=list(domain.keywords) if domain else [],
                patterns=list(domain.patterns) if domain else [],
                prompts=list(prompts_by_domain.get(name, [])), adapter_version=versions.get(name)))
        return cls.configured(profiles, settings.routing)

    @classmethod
    def configured(cls, profiles: list[DomainProfile], routing: Any) -> Router:
        """A router over `profiles` with the values of glmbot.toml's [routing] (a RoutingSettings)."""
        return cls(profiles, fallback=routing.fallback, min_score=routing.min_score, sticky=routing.sticky,
                   small_talk_to_base=routing.small_talk_to_base, topic_change_score=routing.topic_change_score,
                   leave_off_topic=routing.leave_off_topic, second_look=routing.second_look,
                   general_chat=routing.general_chat)

    @property
    def domains(self) -> list[str]:
        return list(self._table.profiles)

    @property
    def remembered(self) -> int:
        """How many conversations have a sticky route (at most the sticky capacity)."""
        return len(self._memory)

    def _check_fallback(self, table: _RoutingTable) -> None:
        if self.fallback != BASE and self.fallback not in table.profiles:
            raise ConfigError(f"routing.fallback = {self.fallback!r} is not a domain (known: "
                              f"{', '.join(table.profiles) or 'none'}); use {BASE!r} or one of them")

    # ------------------------------------------------------------------ changes

    def add_plugin_router(self, fn: PluginRouter) -> None:
        """Ask `fn(text, history) -> RouteDecision | None` after sticky routes and before the rules: about
        a message that no routed conversation keeps, or one routed afresh as off-topic; never about
        the earlier questions of a conversation replayed from its history."""
        if not callable(fn):
            raise TypeError(f"plugin router must be callable as fn(text, history), got {fn!r}")
        with self._lock:
            if fn in self._plugins:
                raise ValueError(f"plugin router {_name_of(fn)} is already registered")
            self._plugins = (*self._plugins, fn)

    def update_profiles(self, profiles: list[DomainProfile], *, remove: Iterable[str] = ()) -> None:
        """Add or replace `profiles` (by name) and drop `remove`, e.g. after an adapter is promoted."""
        with self._lock:
            merged = dict(self._table.profiles)
            for name in remove:
                if name not in merged:
                    raise UnknownDomainError(f"cannot remove unknown domain {name!r}; known domains: "
                                             f"{', '.join(merged) or 'none'}")
                del merged[name]
            for profile in profiles:
                merged[profile.name] = profile
            table = _build_table(merged.values(), self.second_look, self.general_chat)
            self._check_fallback(table)
            self._table = table
            self._memory.keep_domains(table.profiles)

    def forget(self, conversation_id: str) -> bool:
        """Forget a conversation's sticky route; True if it had one."""
        return self._memory.forget(conversation_id)

    # ------------------------------------------------------------------ routing

    def route(self, text: str, *, conversation_id: str | None = None, history: Any = None,
              explicit: str | None = None) -> RouteDecision:
        """The route of one message: the first stage that decides, with its reason and score.

        history: the earlier (question, answer) rounds. A conversation the router has no memory of
        (no id, a new id, or one forgotten) is replayed from them, so a stateless client that sends
        the whole conversation each time routes its follow-ups as a remembered conversation would.
        """
        if not isinstance(text, str):
            raise TypeError(f"route() needs the message text as a str, got {type(text).__name__}")
        table = self._table
        if explicit is not None:
            decision = self._explicit(explicit, table)
            if self.small_talk_to_base:
                decision = small_talk_route(decision, text)
            if self.sticky and conversation_id is not None and decision.reason != "small_talk":
                self._memory.put(conversation_id, decision)
            return decision
        first, where, replayed = None, "", False
        if self.sticky and conversation_id is not None:
            first, where = self._remembered(conversation_id, table), "the conversation"
        if first is None and self.sticky and history:
            first, where, replayed = self._replay(history, table), "the conversation (replayed from its history)", True
        decision, kept = self._decide(text, history, first, where, table)
        # A replayed route is remembered too: the next request of the conversation is not replayed again.
        if self.sticky and conversation_id is not None and kept is not None and (replayed or kept is not first):
            self._memory.put(conversation_id, kept)
        return decision

    def _decide(self, text: str, history: Any, first: RouteDecision | None, where: str, table: _RoutingTable,
                plugins: bool = True, said: _Said | None = None) -> tuple[RouteDecision, RouteDecision | None]:
        """The decision for `text` in a conversation whose route so far is `first` (None: not routed
        yet), and the route the conversation keeps afterwards. plugins=False skips plugin routers;
        said: what `history` holds, where the caller has it."""
        if first is not None and not (first.domain is not None and small_talk_only(text)):
            moved = self._topic_change(text, history, first, table, said)
            if moved is None:
                return self._stay(first, where), first
            if moved is not OFF_TOPIC:
                return replace(moved, detail=f"{moved.detail}; the conversation leaves "
                                             f"{first.domain or 'the plain base'}"), moved
            decision = self._staged(text, history, table, plugins)
            if decision.reason not in ("fallback", "small_talk") and self.topic_change_score >= 1.0:
                # topic_change_score = 1: only keywords and patterns (found none above) move a conversation.
                return self._stay(first, where), first
            # An off-topic message that goes to the fallback does not end the conversation's route: a
            # follow-up on the domain's topic after it ("那周六呢？" after "帮我写首诗") still reaches its prefix.
            kept = first if decision.reason in ("fallback", "small_talk") else decision
            return replace(decision, detail=f"{decision.detail}; off the topic of {first.domain}'s conversation "
                                            f"([routing] leave_off_topic)"), kept
        decision = self._staged(text, history, table, plugins)
        # A fallback is not remembered: a conversation that opens with "你好" must still reach the
        # support prefix when its second message asks about a refund.
        return decision, (first if decision.reason in ("fallback", "small_talk") else decision)

    def _staged(self, text: str, history: Any, table: _RoutingTable, plugins: bool) -> RouteDecision:
        """Plugin routers, then keyword and pattern rules, then the classifier (or the fallback)."""
        return ((self._from_plugins(text, history, table) if plugins else None) or self._from_rules(text, table)
                or self._from_prompt(text, table) or self._from_classifier(text, table))

    @staticmethod
    def _stay(first: RouteDecision, where: str) -> RouteDecision:
        return RouteDecision(first.domain, first.adapter, "sticky", first.score,
                             detail=f"{where} stays with {first.domain or 'the plain base'}, where an earlier "
                                    f"message went by {first.reason}"
                                    + (f" (that message: {first.detail})" if first.detail else ""))

    def _replay(self, history: Any, table: _RoutingTable) -> RouteDecision | None:
        """The route a remembered conversation would have after its earlier questions, by the rules
        and the classifier (plugin routers are asked about the message itself only, not again about
        every earlier one on each request)."""
        first = None
        for _, first in self._replayed(history, table):
            pass
        return first

    def _replayed(self, history: Any, table: _RoutingTable) -> Iterator[tuple[RouteDecision, RouteDecision | None]]:
        """(decision, the route kept afterwards) of each earlier round, in order, as `_replay` makes them."""
        first, said = None, _Said()  # what the rounds so far hold, grown round by round (not re-read: O(n))
        rounds = _rounds(history)
        for i, (question, answer) in enumerate(rounds):
            decision, first = self._decide(question, rounds[:i], first, "", table, plugins=False, said=said)
            said.add(question, answer, table, self.min_score)
            yield decision, first

    def rounds_of(self, domain: str, history: Any) -> list[int]:
        """Indices of the earlier rounds whose questions went to `domain` when the conversation is
        replayed (rules and classifier, as for a conversation the router does not remember): the
        engine shows a domain's prefix its own rounds, not one of general chat that went to the plain
        base in between ("帮我写一首诗" between two questions about teeth)."""
        return [i for i, (decision, _) in enumerate(self._replayed(history, self._table)) if decision.domain == domain]

    def prompt_of(self, text: str) -> str | None:
        """The domain one of whose training prompts `text` is, word for word (punctuation, spaces and
        case aside), or None."""
        return self._table.prompts.get(_letters(text))

    def adapter_version(self, domain: str) -> int | None:
        """The active adapter version the router last read for `domain` (None: unknown or not routable)."""
        profile = self._table.profiles.get(domain)
        return profile.adapter_version if profile is not None else None

    def explain(self, text: str) -> list[tuple[str, float]]:
        """Classifier score of every domain for `text`, best first."""
        table = self._table
        scores = table.classifier.scores(text)
        order = {name: i for i, name in enumerate(table.profiles)}
        return sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))

    def _explicit(self, explicit: str, table: _RoutingTable) -> RouteDecision:
        text = explicit.strip()
        if text == BASE:
            return RouteDecision(None, None, "explicit", 1.0, detail="plain base model requested")
        domain, sep, _ = text.partition("@")
        if domain not in table.profiles:
            raise unknown_domain(domain, [*table.profiles, BASE], listed=f"known domains ({BASE!r}: the plain model)",
                                 add=False)
        if not sep:
            return RouteDecision(domain, None, "explicit", 1.0,
                                 detail=f"domain {domain!r} requested{_active(table, domain)}")
        # Imported here: the registry package pulls in SQLModel, which plain routing never needs.
        from glmbot.registry.refs import parse_ref

        ref = parse_ref(text)  # raises UnknownAdapterError on a bad version such as 'support@x'
        adapter = f"{domain}@v{ref.version}"
        return RouteDecision(domain, adapter, "explicit", 1.0, detail=f"adapter {adapter} requested")

    def _remembered(self, conversation_id: str, table: _RoutingTable) -> RouteDecision | None:
        first = self._memory.get(conversation_id)
        if first is None or (first.domain is not None and first.domain not in table.profiles):
            return None
        return first

    def _topic_change(self, text: str, history: Any, first: RouteDecision, table: _RoutingTable,
                      said: _Said | None = None) -> RouteDecision | str | None:
        """Where a message moves a routed conversation to, OFF_TOPIC, or None when it stays.

        A keyword or pattern of another domain and none of the conversation's own, or a classifier
        score of at least topic_change_score for another domain: the conversation moves there
        ("退货多久到账？" after questions about the library). OFF_TOPIC (route the message afresh, see
        `_off_topic`) for a message that has nothing to do with the domain or the conversation. A
        domain asked for by name stays."""
        if first.reason == "explicit":
            return None
        moved = self._from_rules(text, table)
        if moved is not None and self._rules_match(text, first.domain, table):
            return None
        if moved is None and self.topic_change_score < 1.0:
            moved = self._from_prompt(text, table)
            if moved is not None:
                return None if moved.domain == first.domain else moved
        if moved is None:
            tokens = content_tokens(text)
            decision, nearest, general = self._classify_tokens(tokens, table)
            # A message that is (nearly) one of the domain's own training prompts moves it too: a
            # domain with one wording per question scores such a message only 0.5 (the mean of its
            # TOP_K nearest), under topic_change_score. A message of one content word does not move
            # it on its score alone: "那周末呢？" in a yoga studio's conversation scored 0.79 for the
            # shop's support domain, whose questions say 周末 twice, and left for its garble.
            if (self.topic_change_score < 1.0 and decision.reason == "classifier" and decision.domain != first.domain
                    and ((decision.score >= self.topic_change_score and len(set(tokens)) >= 2)
                         or nearest[decision.domain] >= SAME_PROMPT_COSINE)):
                return decision
            return OFF_TOPIC if self._off_topic(text, tokens, decision.scores, general, history, first, table,
                                                said) else None
        return None if moved.domain == first.domain else moved

    def _off_topic(self, text: str, tokens: list[str], scores: dict[str, float], general: float, history: Any,
                   first: RouteDecision, table: _RoutingTable, said: _Said | None = None) -> bool:
        """[routing] leave_off_topic: none of the domain's rules matching, and either
        - OFF_TOPIC_WORDS or more content words that are not follow-up words (一点, 还有...), closer to the
          reference of general chat than to the domain's prompts by GENERAL_OVER_OWN ([routing] general_chat),
          sharing words with those prompts or in a conversation an earlier question of which does, no word of
          it in the conversation's rounds but those of the prompts ("一个星期有几天" and "帮我写一首诗" after "几天能取衣服？"
          leave, though laundry's prompts say 几天 too; "满十年以后每年加几天？" after an answer saying 满十年
          stays), or
        - OFF_TOPIC_WORDS or more such words of two or more characters, none of them in the domain's
          training prompts or the words of the conversation's earlier rounds, in a conversation an earlier
          question of which shares a word with those prompts ("帮我写一首关于春天的诗" after "拔智齿多少钱？";
          after "帮我写个连衣裙文案", which reached ads by its keyword, "再写一个更活泼的版本" stays)."""
        if not self.leave_off_topic or first.domain is None or self._rules_match(text, first.domain, table):
            return False
        asked = {t for t in tokens if t not in _FOLLOW_UP_WORDS}
        words = {t for t in asked if len(t) > 1}
        if len(asked) < OFF_TOPIC_WORDS:
            return False
        if said is None:
            said = _Said()
            for question, answer in _rounds(history):
                said.add(question, answer, table, self.min_score)
        own = scores.get(first.domain, 0.0)
        if general > GENERAL_OVER_OWN * own and (own > 0.0 or first.domain in said.touched):
            prompt_words = {w for w in asked if table.classifier.has_word(first.domain, w)}
            if not (asked - prompt_words) & said.words:
                return True
        if own > 0.0 or len(words) < OFF_TOPIC_WORDS:
            return False
        # Only where the domain's prompts describe this conversation: a domain reached by keywords whose
        # prompts are of another kind (ads: attribute strings such as 类型#裙*颜色#白色) keeps its follow-ups.
        return first.domain in said.touched and not words & said.words

    @staticmethod
    def _rules_match(text: str, domain: str | None, table: _RoutingTable) -> bool:
        folded = text.casefold()
        return (any(d == domain and k in folded for d, _, k in table.keywords)
                or any(d == domain and p.search(text) for d, _, p in table.patterns))

    def _from_plugins(self, text: str, history: Any, table: _RoutingTable) -> RouteDecision | None:
        # A broken or misconfigured plugin router is skipped with a warning: routing goes on.
        for plugin in self._plugins:
            try:
                decision = plugin(text, history)
            except Exception as exc:  # noqa: BLE001 - a plugin must not fail the request
                log.warning("plugin router %s failed: %s: %s", _name_of(plugin), type(exc).__name__, exc)
                continue
            if decision is None:
                continue
            if not isinstance(decision, RouteDecision):
                log.warning("plugin router %s returned %r instead of a RouteDecision or None; ignored",
                            _name_of(plugin), decision)
                continue
            if decision.domain is not None and decision.domain not in table.profiles:
                log.warning("plugin router %s routed to unknown domain %r (known: %s); ignored", _name_of(plugin),
                            decision.domain, ", ".join(table.profiles) or "none")
                continue
            return replace(decision, reason="plugin", detail=decision.detail or _name_of(plugin))
        return None

    def _from_rules(self, text: str, table: _RoutingTable) -> RouteDecision | None:
        folded = text.casefold()
        for domain, keyword, folded_keyword in table.keywords:
            if folded_keyword in folded:
                return RouteDecision(domain, None, "keyword", 1.0,
                                     detail=f"keyword {keyword!r}{_active(table, domain)}")
        for domain, source, pattern in table.patterns:
            if match := pattern.search(text):
                return RouteDecision(domain, None, "pattern", 1.0,
                                     detail=f"pattern {source!r} matched {match.group(0)!r}"
                                            f"{_active(table, domain)}")
        return None

    @staticmethod
    def _from_prompt(text: str, table: _RoutingTable) -> RouteDecision | None:
        """A message that is one domain's training prompt word for word (punctuation, spaces and case
        aside) goes there, though its words be stop-words alone: "你们在哪里？", a yoga studio's
        question, has no content word for the classifier and went to the plain base, which made up
        an address. Small talk alone stays small talk ("你好" may be a training prompt too)."""
        domain = table.prompts.get(_letters(text))
        if domain is None or small_talk_only(text):
            return None
        return RouteDecision(domain, None, "classifier", 1.0,
                             detail=f"one of {domain}'s training prompts, word for word{_active(table, domain)}")

    def _from_classifier(self, text: str, table: _RoutingTable) -> RouteDecision:
        tokens = content_tokens(text)
        decision = self._classify_tokens(tokens, table)[0]
        if decision.reason == "fallback" and tokens and table.second is not None:
            return self._second_look(tokens, decision, table)
        chat = _CHIT_CHAT.search(text.casefold()) if not tokens else None
        if chat is not None and decision.reason == "fallback":
            # "北京今天天气怎么样？" was told "only greetings, chit-chat, stop-words or punctuation": name the
            # small talk, and say why 北京 and 今天 did not count.
            decision = replace(decision, detail=f"small talk ({chat.group()}), nothing else a domain could answer")
        return decision

    def _second_look(self, tokens: list[str], fallback: RouteDecision, table: _RoutingTable) -> RouteDecision:
        """The second look's route, or the word classifier's fallback with what the second look saw."""
        look = table.second.look(tokens, self.min_score)
        domain, score, general, need = look
        if look.routes:
            # The word classifier's scores stay beside the decision (glmbot route shows them).
            return RouteDecision(domain, None, "second_look", score, fallback.scores,
                                 detail=f"its words and characters match {domain}'s training prompts ({score:.2f}, "
                                        f"needed {need:.2f}) more than general chat ({general:.2f}){_active(table, domain)}")
        if score < need:
            seen = f"{domain} {score:.2f}, under the {need:.2f} it needs"
        else:
            seen = f"general chat {general:.2f}, {domain} {score:.2f}"
        return replace(fallback, detail=f"{fallback.detail}; by its characters too: {seen}")

    def _classify_tokens(self, tokens: list[str], table: _RoutingTable
                         ) -> tuple[RouteDecision, dict[str, float], float]:
        """The word classifier's decision, with each domain's nearest-prompt cosine and the general chat's
        score (0 without the reference) beside it."""
        scores, nearest, general = table.classifier.scores_and_nearest(tokens)
        # max() keeps the first of equal scores, i.e. the domain listed first.
        best = max(table.profiles, key=lambda name: scores[name], default=None)
        best_score = scores[best] if best is not None else 0.0
        if best is not None and best_score > 0 and best_score >= self.min_score and best_score > general:
            return RouteDecision(best, None, "classifier", best_score, scores,
                                 detail=f"nearest training prompts are {best}'s{_active(table, best)}"), nearest, general
        if not tokens:
            why = "only greetings, chit-chat, stop-words or punctuation"
        elif best_score == 0.0:
            # Name the words looked for: a newcomer read this about 你们店地址在哪？ and saw 你们 and 哪 in their
            # questions (stop-words, never compared).
            why = f"none of its words ({', '.join(dict.fromkeys(tokens))}) occurs in any domain's training prompts"
        elif best_score >= self.min_score:
            why = f"its words are closer to general chat ({general:.3f}) than to {best}'s training prompts ({best_score:.3f})"
        else:
            why = f"best classifier score {best_score:.3f} ({best}) < min_score {self.min_score}"
        domain = None if self.fallback == BASE else self.fallback
        return RouteDecision(domain, None, "fallback", best_score, scores, detail=why), nearest, general


@dataclass
class _Said:
    """What a conversation's earlier rounds hold, for the off-topic rule: their words, and the domains
    whose training prompts one of its questions shares a word with (or the second look sent it to)."""

    words: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)

    def add(self, question: str, answer: str, table: _RoutingTable, min_score: float) -> None:
        asked = _words(question)
        self.words |= asked | _words(answer)
        if asked:
            self.touched |= {d for d, s in table.classifier.token_scores(list(asked)).items() if s > 0}
            # A question the second look sent to a domain (by characters, perhaps no word) describes it too.
            if table.second is not None and (look := table.second.look(list(asked), min_score)).routes:
                self.touched.add(look.domain)


@lru_cache(maxsize=16_384)
def _words(text: str) -> frozenset[str]:
    """content_tokens of an earlier message, cached: every request of a conversation sends them again."""
    return frozenset(content_tokens(text))


@lru_cache(maxsize=1)
def _general_chat_tokens() -> tuple[list[str], ...]:
    return tuple(tokens for tokens in map(content_tokens, general_chat()) if tokens)


@lru_cache(maxsize=1)
def general_chat() -> tuple[str, ...]:
    """The router's reference of general chat (glmbot/data/general_chat.txt, scripts/make_general_chat.py)."""
    lines = GENERAL_CHAT_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _letters(text: str) -> str:
    """`text` case-folded, with only its letters and digits (a training prompt's key)."""
    return "".join(_LETTERS.findall(text.casefold()))


_LETTERS = re.compile(r"[^\W_]+")


def _rounds(history: Any) -> list[tuple[str, str]]:
    """The (question, answer) rounds of `history`; anything else in it (a plugin's own shape) is skipped."""
    if not isinstance(history, (list, tuple)):
        return []
    return [(turn[0], turn[1]) for turn in history
            if isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(x, str) for x in turn)]


def _active(table: _RoutingTable, domain: str) -> str:
    """' (active vN)' when the domain's active adapter version is known, for the decision's detail."""
    version = table.profiles[domain].adapter_version
    return f" (active v{version})" if version is not None else ""


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
