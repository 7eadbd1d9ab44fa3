"""AdvertiseGen-style product copy: attribute strings and the ad texts that describe them.

Two voices share one attribute vocabulary. `generic_ad` is the plain shop voice the tiny base
is pretrained on; `brand_ad` is the 「鹿语」 brand voice that only the shipped ads sample uses,
so an ads prefix has a tone of its own to learn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BRAND = "鹿语"
BRAND_SIGNATURE = "鹿语，陪你慢慢生活。"


@dataclass(frozen=True)
class Garment:
    """One 类型 value with the attributes that make sense for it."""

    kind: str  # the 类型 value, e.g. 裙
    noun: str  # how the ad names it when no attribute gives a better name
    measure: str  # 量词: 条, 件, 双
    noun_keys: tuple[str, ...]  # attributes whose value names the item; first present wins
    closings: tuple[str, ...]  # last clause of a plain-voice ad
    attributes: dict[str, tuple[str, ...]]


_CLOTH = ("棉", "雪纺", "牛仔布", "针织", "真丝", "亚麻", "羊毛", "蕾丝")
_COLORS = ("白色", "黑色", "红色", "粉色", "蓝色", "绿色", "黄色", "灰色", "卡其色", "杏色", "藏青色", "紫色")
_STYLES = ("清新", "复古", "简约", "文艺", "休闲", "通勤", "甜美", "街头", "优雅")
_PATTERNS = ("碎花", "条纹", "格子", "纯色", "印花", "刺绣", "波点", "字母")
_FITS = ("宽松", "修身", "直筒", "显瘦")
_COLLARS = ("圆领", "翻领", "立领", "娃娃领", "方领", "一字领", "高领")

GARMENTS: tuple[Garment, ...] = (
    Garment("裙", "裙子", "条", ("裙型", "裙长"),
            ("无论约会还是出游都很出彩", "轻松穿出温柔气质", "是夏日衣橱里的必备单品"),
            {"版型": _FITS, "材质": _CLOTH, "颜色": _COLORS, "风格": _STYLES, "图案": _PATTERNS,
             "裙长": ("短裙", "中长裙", "长裙", "连衣裙"), "裙型": ("A字裙", "百褶裙", "包臀裙", "网纱裙"),
             "领型": _COLLARS, "袖长": ("短袖", "长袖", "七分袖", "无袖")}),
    Garment("上衣", "上衣", "件", ("衣样式",),
            ("单穿或内搭都很好看", "搭配半身裙或牛仔裤都很有型", "日常通勤也毫不费力"),
            {"版型": _FITS, "材质": _CLOTH, "颜色": _COLORS, "风格": _STYLES, "图案": _PATTERNS,
             "衣样式": ("衬衫", "卫衣", "打底衫", "毛衣"), "领型": _COLLARS,
             "袖长": ("短袖", "长袖", "七分袖", "无袖"), "袖型": ("泡泡袖", "灯笼袖", "喇叭袖")}),
    Garment("裤", "裤子", "条", ("裤型", "裤长"),
            ("搭配衬衫或针织衫都很合适", "走路带风，气场十足", "舒适又百搭"),
            {"版型": _FITS, "材质": ("棉", "牛仔布", "亚麻", "针织", "羊毛"), "颜色": _COLORS, "风格": _STYLES,
             "裤长": ("九分裤", "七分裤", "长裤", "短裤"), "裤型": ("阔腿裤", "直筒裤", "哈伦裤", "小脚裤", "喇叭裤"),
             "裤腰型": ("高腰", "松紧腰")}),
    Garment("外套", "外套", "件", ("衣样式",),
            ("春秋出门随手一披就很有型", "保暖又有型", "内搭什么都好看"),
            {"版型": _FITS, "材质": ("棉", "牛仔布", "羊毛", "针织"), "颜色": _COLORS, "风格": _STYLES,
             "衣样式": ("风衣", "西装", "夹克", "大衣", "开衫"), "领型": ("翻领", "立领", "连帽"),
             "衣长": ("短款", "中长款", "长款")}),
    Garment("鞋", "鞋子", "双", ("鞋样式",),
            ("久走也不累脚", "搭配裙装裤装都合适", "让每一步都轻松自在"),
            {"材质": ("帆布", "真皮", "网布", "麂皮"), "颜色": _COLORS, "风格": ("休闲", "简约", "复古", "街头", "通勤"),
             "鞋样式": ("运动鞋", "小白鞋", "帆布鞋", "乐福鞋", "短靴", "凉鞋"), "鞋跟": ("平底", "粗跟", "细跟"),
             "鞋头": ("圆头", "尖头", "方头")}),
)
_GARMENT_BY_KIND = {g.kind: g for g in GARMENTS}

# AdvertiseGen lists keys in a stable order; 类型 always comes first
KEY_ORDER = ("类型", "版型", "材质", "颜色", "风格", "图案", "裙型", "裙长", "衣样式", "裤型", "裤长",
             "裤腰型", "领型", "袖长", "袖型", "衣长", "鞋样式", "鞋跟", "鞋头")

COLOR_FEEL = {
    "白色": "干净清爽", "黑色": "沉稳百搭", "红色": "热烈显白", "粉色": "温柔甜美", "蓝色": "清爽宁静",
    "绿色": "清新自然", "黄色": "明亮活泼", "灰色": "低调高级", "卡其色": "复古温暖", "杏色": "温柔知性",
    "藏青色": "稳重大气", "紫色": "浪漫神秘",
}
STYLE_FEEL = {
    "清新": "透着清新自然的气息", "复古": "带着淡淡的复古味道", "简约": "简约大方又不失质感",
    "文艺": "充满文艺气质", "休闲": "休闲随性又舒适", "通勤": "干练知性", "甜美": "甜美可爱又减龄",
    "街头": "个性十足很有态度", "优雅": "优雅端庄气质满分",
}
# one descriptive clause per attribute value (颜色 and 风格 are handled separately)
FEATURE = {
    "棉": "采用棉质面料，亲肤透气", "雪纺": "雪纺面料轻盈飘逸", "牛仔布": "牛仔面料硬挺耐穿",
    "针织": "针织面料柔软有弹性", "真丝": "真丝面料顺滑有光泽", "亚麻": "亚麻面料透气凉爽",
    "羊毛": "羊毛面料保暖细腻", "蕾丝": "蕾丝面料精致浪漫", "帆布": "帆布鞋面透气轻便",
    "真皮": "真皮鞋面柔软有质感", "网布": "网布鞋面透气不闷脚", "麂皮": "麂皮材质细腻复古",
    "碎花": "碎花点缀其间，浪漫又灵动", "条纹": "经典条纹富有层次感", "格子": "格纹元素增添学院气息",
    "纯色": "纯色设计简洁耐看", "印花": "印花图案活泼吸睛", "刺绣": "精致刺绣彰显细节",
    "波点": "俏皮波点充满复古味道", "字母": "字母图案时髦有态度",
    "宽松": "宽松的版型不挑身材，穿着自在", "修身": "修身版型勾勒出好身材", "直筒": "直筒版型利落大方",
    "显瘦": "显瘦剪裁修饰身形",
    "圆领": "圆领设计简洁百搭", "翻领": "翻领设计精神干练", "立领": "立领设计挺括有型",
    "娃娃领": "娃娃领甜美减龄", "方领": "方领露出锁骨，显得脖子修长", "一字领": "一字领优雅迷人",
    "高领": "高领设计保暖又显气质", "连帽": "连帽设计休闲又挡风",
    "短袖": "短袖设计清凉透气", "长袖": "长袖设计遮住手臂", "七分袖": "七分袖露出纤细手腕",
    "无袖": "无袖设计清爽利落", "泡泡袖": "泡泡袖增添甜美感", "灯笼袖": "灯笼袖浪漫有趣",
    "喇叭袖": "喇叭袖飘逸灵动",
    "短裙": "短裙长度显得双腿修长", "中长裙": "中长的裙长优雅得体", "长裙": "长裙摇曳生姿",
    "连衣裙": "连衣裙一件就能出门，省去搭配烦恼", "A字裙": "A字裙摆遮肉显瘦", "百褶裙": "百褶裙摆走起路来灵动飘逸",
    "包臀裙": "包臀设计凸显曲线", "网纱裙": "层层网纱仙气十足",
    "衬衫": "衬衫款式经典耐穿", "卫衣": "卫衣款式舒适休闲", "打底衫": "打底衫贴身好搭", "毛衣": "毛衣温暖软糯",
    "风衣": "风衣款式挺括有气场", "西装": "西装款式利落干练", "夹克": "夹克款式帅气随性",
    "大衣": "大衣款式大气保暖", "开衫": "开衫款式穿脱方便",
    "短款": "短款设计提高腰线，显高显瘦", "中长款": "中长款更显大气", "长款": "长款设计保暖又有气场",
    "九分裤": "九分长度露出脚踝，显得利落", "七分裤": "七分长度清爽干练", "长裤": "长裤修饰腿型",
    "短裤": "短裤清凉又活力", "阔腿裤": "阔腿裤型垂感好，遮住腿型", "直筒裤": "直筒裤型修饰腿型",
    "哈伦裤": "哈伦裤型舒适随性", "小脚裤": "小脚裤型显瘦显腿长", "喇叭裤": "微喇裤型复古又显高",
    "高腰": "高腰设计拉长腿部比例", "松紧腰": "松紧腰头穿脱方便",
    "运动鞋": "运动鞋款轻盈有弹性", "小白鞋": "小白鞋百搭耐看", "帆布鞋": "帆布鞋款青春随性",
    "乐福鞋": "乐福鞋款精致有型", "短靴": "短靴款式帅气保暖", "凉鞋": "凉鞋款式清凉透气",
    "平底": "平底设计走路不累", "粗跟": "粗跟稳当好走", "细跟": "细跟显得优雅",
    "圆头": "圆头设计不挤脚", "尖头": "尖头设计显脚瘦长", "方头": "方头设计复古有型",
}
# 鹿语's voice: an image for the colour and a line spoken to the wearer for the style
BRAND_IMAGE = {
    "白色": "一朵安静的云", "黑色": "深夜温柔的星空", "红色": "冬日里的一盏灯", "粉色": "春天的第一朵樱花",
    "蓝色": "初夏的湖面", "绿色": "雨后的林间", "黄色": "午后的阳光", "灰色": "清晨的薄雾",
    "卡其色": "秋天的麦田", "杏色": "一杯温热的奶茶", "藏青色": "夜色里的海", "紫色": "傍晚的晚霞",
}
BRAND_STYLE_IMAGE = {
    "清新": "山间的一汪清泉", "复古": "一张泛黄的老照片", "简约": "一页干净的白纸", "文艺": "书页间的一枚书签",
    "休闲": "周末慢悠悠的午后", "通勤": "清晨的第一杯咖啡", "甜美": "一颗水果糖", "街头": "城市里的一阵风",
    "优雅": "月光下的湖水",
}
BRAND_DEFAULT_IMAGES = ("林间一缕温柔的风", "山谷里的一声鸟鸣", "窗边的一束光", "雨后清新的空气")
BRAND_YOU = {
    "清新": "让你走在风里也清清爽爽", "复古": "让你穿出旧时光的温柔", "简约": "让你少一点装饰，多一点从容",
    "文艺": "让你带着一本书就能出门", "休闲": "让你在周末里慢慢放松", "通勤": "让你在忙碌里也保持体面",
    "甜美": "让你的笑容更甜一点", "街头": "让你大胆做自己", "优雅": "让你举手投足都从容",
}


def random_attributes(rng: random.Random, kind: str | None = None) -> dict[str, str]:
    """A 类型 plus 2-5 other attributes that suit it, e.g. {"类型": "裙", "颜色": "白色", ...}."""
    garment = _GARMENT_BY_KIND[kind] if kind else rng.choice(GARMENTS)
    keys = rng.sample(sorted(garment.attributes), rng.randint(2, min(5, len(garment.attributes))))
    return {"类型": garment.kind} | {k: rng.choice(garment.attributes[k]) for k in keys}


def content_string(attributes: dict[str, str]) -> str:
    """AdvertiseGen's prompt form: 类型#裙*颜色#白色*..."""
    return "*".join(f"{k}#{attributes[k]}" for k in KEY_ORDER if k in attributes)


def _item_noun(garment: Garment, attributes: dict[str, str]) -> tuple[str, str | None]:
    # returns the noun and the attribute key it consumed, so that key gets no extra clause
    for key in garment.noun_keys:
        if key in attributes:
            return attributes[key], key
    return garment.noun, None


def _feature_clauses(attributes: dict[str, str], skip: set[str]) -> list[str]:
    return [FEATURE[v] for k, v in attributes.items() if k not in skip and v in FEATURE]


def generic_ad(rng: random.Random, attributes: dict[str, str]) -> str:
    """Plain shop voice: 1-3 sentences, about 30-90 characters."""
    garment = _GARMENT_BY_KIND[attributes["类型"]]
    noun, noun_key = _item_noun(garment, attributes)
    color = attributes.get("颜色", "")
    features = _feature_clauses(attributes, {"类型", "颜色", "风格", noun_key or ""})
    rng.shuffle(features)
    if color:
        features.insert(rng.randint(0, len(features)), f"颜色{COLOR_FEEL[color]}")
    if not features:  # e.g. only 风格 and 裙长 given: the noun already carries 裙长
        features = ["做工精致，细节用心"]
    opener = rng.choice(("这款{c}{n}，", "这{m}{c}{n}，", "推荐这{m}{c}{n}：", "今天分享一{m}{c}{n}，"))
    text = opener.format(c=color, n=noun, m=garment.measure) + "，".join(features[:3]) + "。"
    closing = rng.choice(garment.closings)
    if "风格" in attributes:
        return text + f"整体{STYLE_FEEL[attributes['风格']]}，{closing}。"
    return text + f"{closing}。" if rng.random() < 0.7 else text


def brand_ad(rng: random.Random, attributes: dict[str, str]) -> str:
    """「鹿语」's voice: an image, two features, a line to the wearer, then the signature."""
    garment = _GARMENT_BY_KIND[attributes["类型"]]
    noun, noun_key = _item_noun(garment, attributes)
    color = attributes.get("颜色", "")
    style = attributes.get("风格", "")
    # the image comes from the colour, else the style, so the same item reads the same way
    image = BRAND_IMAGE.get(color) or BRAND_STYLE_IMAGE.get(style) or rng.choice(BRAND_DEFAULT_IMAGES)
    features = _feature_clauses(attributes, {"类型", "颜色", "风格", noun_key or ""})
    rng.shuffle(features)
    you = BRAND_YOU.get(style, "让你每天都轻松自在")
    body = "，".join([*features[:2], you])
    return f"{BRAND}{color}{noun}，像{image}。{body}。{BRAND_SIGNATURE}"


def ad_request(rng: random.Random, attributes: dict[str, str]) -> str:
    """A natural-language request for the ad that `attributes` describe."""
    garment = _GARMENT_BY_KIND[attributes["类型"]]
    noun, _ = _item_noun(garment, attributes)
    color = attributes.get("颜色", "")
    template = rng.choice((
        "帮我写一段{c}{n}的广告文案。", "给这{m}{c}{n}写个商品介绍吧。", "请根据这些属性写一段商品文案：{s}",
        "写一段广告词：{s}", "我在卖一{m}{c}{n}，帮我写几句推广文案。",
    ))
    return template.format(c=color, n=noun, m=garment.measure, s=content_string(attributes))
