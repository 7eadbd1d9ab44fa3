"""Write the demo sample data shipped in glmbot/data/samples/ (deterministic).

    python scripts/make_sample_data.py [OUT_DIR]    # default: glmbot/data/samples

support_*: 小鹿商城's after-sales Q&A; ads_*: 「鹿语」 brand copy; general_probe: small talk the
base must keep answering; routing_heldout: messages no training file contains, for the router.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

if __package__:
    from .ad_copy import brand_ad, content_string, random_attributes
    from .small_talk import PROBES
    from .support_intents import INTENTS, SHOP_GREETING, xiaolu_facts
else:  # run as `python scripts/make_sample_data.py`: this folder is on sys.path
    from ad_copy import brand_ad, content_string, random_attributes
    from small_talk import PROBES
    from support_intents import INTENTS, SHOP_GREETING, xiaolu_facts

SEED = 20240601
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "glmbot" / "data" / "samples"
MULTI_TURN_SHARE = 0.1
ADS_TRAIN, ADS_DEV, ADS_ROUTING = 200, 40, 10

ROUTING_SUPPORT = (
    "请问你们退货需要在几天内申请？", "客服电话打不通，还有别的号码吗？", "买的耳机坏了，保修怎么处理？",
    "下单以后多久能寄出来？", "发票开错了能重开吗？", "会员积分快过期了怎么办？", "我想把收货地址改成公司地址。",
    "退款三天了还没到账，怎么回事？", "你们用的是什么快递公司？", "满多少钱可以免邮费？", "优惠券为什么用不了？",
    "这双鞋码数偏大，能换小一号吗？", "预售的衣服什么时候能发货？", "订单可以取消吗？我拍重复了。",
    "收到的杯子有裂缝。", "能不能寄到台湾？", "营业到晚上几点？", "我想找人工客服聊聊。",
    "退货的运费可以退给我吗？", "你们的东西有正品保证吗？",
)
ROUTING_ADS = (
    "帮我给一条黑色阔腿裤写段广告。", "能写一段白色小白鞋的推广文案吗？", "给新款碎花连衣裙来一段卖点文案。",
    "写一句吸引人的毛衣广告语。", "帮我为一件卡其色风衣写商品描述。", "我要上架一条牛仔短裤，帮我写个介绍。",
    "给这件粉色泡泡袖衬衫写段种草文案。", "请写一段关于真丝长裙的广告。", "帮忙写个针织开衫的宣传语。",
    "为一双复古短靴写一段带货文案。",
)
ROUTING_BASE = (
    "嗨，今天心情不错！", "你好，很高兴认识你。", "你是人工智能吗？", "十二加十三是多少？", "日本的首都是哪座城市？",
    "推荐一本适合睡前看的书。", "周末去哪里玩比较好？", "怎么做番茄炒蛋？", "今天是星期五，大后天是星期几？",
    "给我讲个笑话吧。", "晚上吃什么好呢？", "我有点累，想休息一下。", "谢谢你的帮助！", "拜拜啦，明天见。",
    "熊猫生活在哪里？", "怎样才能睡得更好？", "你喜欢什么颜色？", "一年有几个星期？", "你会说英语吗？",
    "帮我想一个生日祝福语。",
)


def _chat_row(prompt: str, response: str, history: list[list[str]]) -> dict:
    return {"prompt": prompt, "response": response, "history": history}


def support_train(rng: random.Random) -> list[dict]:
    """Every train phrasing once, single-turn, plus ~10% multi-turn rows reusing them."""
    facts = xiaolu_facts()
    singles = [(p, i.answers[0].format(**facts)) for i in INTENTS for p in i.train]
    rows = [_chat_row(p, r, []) for p, r in singles]
    greeting = ["你好", SHOP_GREETING.format(shop=facts["shop"])]
    for _ in range(round(len(singles) * MULTI_TURN_SHARE)):
        earlier = [list(pair) for pair in rng.sample(singles, rng.randint(1, 2))]
        history = [greeting, *earlier[:1]] if rng.random() < 0.4 else earlier
        prompt, response = rng.choice([s for s in singles if list(s) not in history])
        rows.append(_chat_row(prompt, response, history))
    rng.shuffle(rows)
    return rows


def support_dev() -> list[dict]:
    """The held-out phrasings with the same canonical answers."""
    facts = xiaolu_facts()
    return [_chat_row(p, i.answers[0].format(**facts), []) for i in INTENTS for p in i.dev]


def _distinct_attributes(rng: random.Random, count: int, taken: set[str]) -> list[dict[str, str]]:
    # content strings are unique across train, dev and routing so none leaks into another
    found = []
    while len(found) < count:
        attributes = random_attributes(rng)
        if content_string(attributes) not in taken:
            taken.add(content_string(attributes))
            found.append(attributes)
    return found


def ads_splits(rng: random.Random) -> tuple[list[dict], list[dict], list[str]]:
    """「鹿语」 ads for train and dev, and held-out ad prompts for the router."""
    taken: set[str] = set()
    rows = [{"content": content_string(a), "summary": brand_ad(rng, a)}
            for a in _distinct_attributes(rng, ADS_TRAIN + ADS_DEV, taken)]
    routing = [content_string(a) for a in _distinct_attributes(rng, ADS_ROUTING, taken)]
    return rows[:ADS_TRAIN], rows[ADS_TRAIN:], routing


def routing_heldout(ad_contents: list[str]) -> list[dict]:
    """~60 labelled messages no training file contains."""
    labelled = [(t, "support") for t in ROUTING_SUPPORT] + [(t, "ads") for t in (*ROUTING_ADS, *ad_contents)]
    return [{"text": t, "domain": d} for t, d in labelled + [(t, "base") for t in ROUTING_BASE]]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def sample_files() -> dict[str, list[dict]]:
    """File name -> rows, for every JSONL file this script ships."""
    rng = random.Random(SEED)
    ads_train, ads_dev, ad_routing = ads_splits(rng)
    return {
        "support_train.jsonl": support_train(rng),
        "support_dev.jsonl": support_dev(),
        "ads_train.jsonl": ads_train,
        "ads_dev.jsonl": ads_dev,
        "general_probe.jsonl": [{"prompt": p, "reference": r} for p, r in PROBES],
        "routing_heldout.jsonl": routing_heldout(ad_routing),
    }


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in sample_files().items():
        write_jsonl(out / name, rows)
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main(sys.argv)
