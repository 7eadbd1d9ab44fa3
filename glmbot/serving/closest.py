"""The training question a reworded question stands for, on the builtin base ([serving] closest_question).

A prefix on the builtin base (9.6M parameters) gives back its training answers to its training questions
(ROUGE-L 97-100) but reaches rewordings of them only in part (the tuning domains' paraphrases: 48.7-74.2):
`月卡多少钱？` is answered, `办张月卡要多少钱？` half of the time. When a question routed to a domain is
close, by its words and their characters, to one of the adapter's training questions and to no other, the
prefix is asked that training question instead, and the route's detail says so. A real base (ChatGLM2-6B)
reads rewordings itself and is always asked the user's words.

Chosen on the two development sets (2026-12-06; seed 42, the default recipes, 2 CPU cores): the tuning
domains (scripts/tuning_domains: gym, bakery, driving_school, property; ROUGE-L of their 40 paraphrases,
the prefix alone 62.0) and the shop's support domain (225 rows, its 40 dev questions: the prefix alone 59.8,
20 exact). The closest question's cosine must be >= 0.3 and 1.2x the second's: tuning 77.0, but support
58.0 (19 exact): in a broad domain rewordings share words with the wrong questions (收到货不满意还能退吗？ ->
多久能收到货？). Its questions come close to one another (median cosine of each to its nearest other: 0.52,
against 0.25-0.36 for the 30-40-line FAQs), so a message must also come closer than that median: tuning
75.4, support 62.1 (21 exact). Quantile 0.6 / 0.75: 73.7 / 73.7, 60.1 / 59.7; margin 1.5: 73.2, 61.9;
words alone (no characters) at best 74.4 on tuning; characters alone 76.4.

A short follow-up that leans on the question before it ("那私教课呢？" after "办了卡能退吗？", `leans_back`)
reached the prefix behind that round, which the builtin base reads poorly: 16 such follow-ups written
for the tuning domains (scripts/tuning_domains/*/followups.jsonl, each standing for another training
question) scored ROUGE-L 32.5, 3 exact. It is now asked as the training question closest to both that
holds a word or character of its own (私教课可以退吗？): 15 of 16 found, all right, 16 exact.
"""

from __future__ import annotations

from glmbot.serving.router import CHAR_WEIGHT, PromptClassifier, _letters, content_tokens

MIN_COSINE = 0.3  # the closest training question's cosine, words and characters (TF-IDF over the adapter's questions)
MARGIN = 1.2      # ... and this many times the second closest's: 退款多久到账 and 退货多久到账 leave it to the prefix
QUANTILE = 0.5    # ... and closer than this share of its questions come to their nearest other one
FOLLOW_UP_CANDIDATES = 8  # closest questions to the earlier one and a follow-up, looked through for its words


def index_of(data_format: str | None, questions: list[str] | None) -> ClosestQuestion | None:
    """The index of an adapter's training questions, or None where a rewording can stand for none of them:
    none recorded (imported adapters), or AdvertiseGen's attribute strings (类型#裙*颜色#白色: another colour
    asks for another text), known by the data format the adapter recorded, else (adapters trained before it
    was recorded) by their shape."""
    if not questions:
        return None
    asks = data_format == "chat" if data_format is not None else 2 * sum("#" in q for q in questions) < len(questions)
    return ClosestQuestion(questions) if asks else None


class ClosestQuestion:
    """One adapter's training questions, indexed by their words and the characters of those words."""

    def __init__(self, questions: list[str]) -> None:
        self.classifier = PromptClassifier({"questions": list(questions)}, char_weight=CHAR_WEIGHT)
        self._exact = {_letters(q) for q in questions}
        # How close the domain's own questions come to one another: a message must come closer than that.
        nearest = sorted(next((c for p, c in self.classifier.closest_prompts(content_tokens(q), n=2) if p != q), 0.0)
                         for q in dict.fromkeys(questions))
        self.min_cosine = max(MIN_COSINE, nearest[int(QUANTILE * (len(nearest) - 1))] if nearest else 0.0)

    def find(self, text: str) -> str | None:
        """The training question `text` rewords, or None: one of them already, or none close enough
        (or two about as close)."""
        if _letters(text) in self._exact:
            return None
        closest = self.classifier.closest_prompts(content_tokens(text), n=2)
        if not closest or closest[0][1] < self.min_cosine:
            return None
        if len(closest) > 1 and closest[0][1] < MARGIN * closest[1][1]:
            return None
        return closest[0][0]

    def follow_up(self, text: str, earlier: str) -> str | None:
        """The training question a short follow-up asks together with the earlier question it leans on
        ("那私教课呢？" after "办了卡能退吗？": 私教课可以退吗？), or None: the closest to both that holds a word or
        character of the follow-up's own, other than the earlier question, by MARGIN over the next such one.
        A follow-up with no content word of its own ("还有呢？") stands for none."""
        # Its own: what the earlier question does not hold (那换货呢？ after 退货多久到账？ shares 货 with it,
        # and 退货多久能到账？ is not what it asks).
        features = self.classifier.features
        own = features(content_tokens(text)).keys() - features(content_tokens(earlier)).keys()
        if not own:
            return None
        both = content_tokens(earlier) + content_tokens(text)
        closest = self.classifier.closest_prompts(both, n=FOLLOW_UP_CANDIDATES)
        fits = [(question, cosine) for question, cosine in closest if _letters(question) != _letters(earlier)
                and own & features(content_tokens(question)).keys()]
        if not fits or (len(fits) > 1 and fits[0][1] < MARGIN * fits[1][1]):
            return None
        return fits[0][0]

