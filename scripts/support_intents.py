"""Support intents shared by the shipped sample data and the tiny pretraining corpus.

Every intent carries its question phrasings and answer templates. The sample data answers
them with 小鹿商城's fact sheet; the corpus answers the same phrasings with facts of other,
randomly drawn shops. Other shops draw every fact from a pool that includes 小鹿商城's value, so the base knows
all the wording; what a prefix has to learn is which value 小鹿商城 uses, its hotline and name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

XIAOLU_SHOP = "小鹿商城"
XIAOLU_HOTLINE = "400-820-1234"

# field -> (小鹿商城's value, the other values shops may take)
FACT_FIELDS: dict[str, tuple[str, list[str]]] = {
    "hours": ("9:00-21:00", ["8:00-22:00", "9:00-18:00", "10:00-22:00", "8:30-20:30", "9:00-22:00", "8:00-20:00"]),
    "return_days": ("7", ["10", "14", "15", "30"]),
    "exchange_days": ("15", ["7", "10", "30"]),
    "refund_time": ("1-3个工作日", ["3-5个工作日", "5-7个工作日", "24小时内", "7个工作日内", "2-5个工作日"]),
    "courier": ("顺丰", ["中通", "圆通", "韵达", "京东物流", "申通", "邮政", "极兔"]),
    "ship_within": ("48小时", ["24小时", "72小时", "36小时", "12小时"]),
    "delivery_time": ("2-3天", ["1-2天", "3-5天", "3-7天", "4-6天"]),
    "free_ship": ("99", ["59", "69", "79", "88", "129", "199"]),
    "remote_fee": ("10", ["5", "8", "12", "15", "20"]),
    "warranty": ("一年", ["半年", "两年", "三年", "十八个月"]),
    "invoice": ("确认收货后可在订单详情页申请电子发票", [
        "下单时填写开票信息，纸质发票会随货寄出",
        "联系在线客服提供抬头和税号即可开具电子发票",
        "订单完成后在“我的-发票管理”里申请电子发票",
        "付款后在订单页点“开发票”，电子发票会发到您的邮箱",
    ]),
    "points_earn": ("每消费1元积1分", ["每消费1元积2分", "每消费10元积1分", "每消费1元积5分"]),
    "points_redeem": ("100积分抵1元", ["50积分抵1元", "200积分抵1元", "10积分抵1元", "1000积分抵5元"]),
    "coupon": ("满199减20", ["满99减10", "满299减30", "满150减15", "满500减60", "满59减5"]),
    "coupon_stack": ("每单限用一张，不能和其他优惠叠加", [
        "可以和满减活动叠加使用", "每单限用一张，可以和积分同时使用", "每单最多可以用两张",
    ]),
    "coupon_valid": ("30", ["7", "15", "60", "90"]),
    "address_change": ("发货前可在订单详情页自行修改地址，已发货的请联系客服", [
        "下单后30分钟内可以在订单页修改地址，超过时间请联系在线客服",
        "发货前联系在线客服即可修改地址，发货后就无法修改了",
        "未发货前可以在“我的订单”里改地址，发货后可以联系快递员改派",
    ]),
    "out_of_stock": ("可以点商品页的“到货通知”，补货后会短信提醒您", [
        "一般3-5天会补货，可以先加入购物车",
        "可以先下单预订，到货后按下单顺序发货",
        "可以联系客服登记，到货后我们会电话通知您",
        "商品页会显示补货时间，通常一周内补齐",
    ]),
    "presale_ship": ("付尾款后10天内", ["付款后5天内", "付尾款后15天内", "预售结束后7天内", "付款后20天内"]),
    "deposit_rule": ("不予退还", ["在付尾款前可以申请退回", "未付尾款可全额退回", "可以在预售结束前退回"]),
    "cancel": ("未发货的订单可在订单页直接取消，款项原路退回", [
        "付款后1小时内可以自行取消，超过时间请联系客服",
        "未发货可以申请取消，客服审核后为您退款",
        "订单发货前都可以取消，退款会退到账户余额",
    ]),
    "price_protect": ("购买后7天内降价可申请价保，退还差价", [
        "购买后15天内降价可以申请退还差价",
        "购买后30天内降价可以联系客服补差价",
        "目前不提供价保服务，敬请谅解",
    ]),
    "payment": ("微信、支付宝和银行卡", ["支付宝、微信和云闪付", "微信、支付宝、信用卡和花呗", "支付宝和银行卡", "微信支付和银联卡"]),
    "cod": ("暂不支持货到付款，请在线完成支付", [
        "支持货到付款，需要加收5元服务费", "部分城市支持货到付款，下单时可以选择", "支持货到付款，不收额外费用",
    ]),
    "tracking": ("在“我的订单”里点“查看物流”就能看到实时进度", [
        "在首页点“物流查询”，输入订单号即可查看",
        "发货后会短信推送快递单号，可以在快递官网查询",
        "在订单详情页下方就能看到物流信息",
    ]),
    "damaged": ("请在签收后48小时内拍照联系客服，我们会免费补发或退款", [
        "请在签收后24小时内拍照联系客服，我们会为您补发",
        "请在签收后72小时内提交照片，核实后全额退款",
        "建议当场拒收并联系客服，我们会重新为您发货",
    ]),
    "return_fee": ("质量问题运费由我们承担，无理由退货运费由买家承担", [
        "每单都赠送运费险，退货基本不用您出运费",
        "退货运费统一由我们承担，您不用出钱",
        "退货运费由买家先垫付，收货后我们补贴10元",
    ]),
    "how_return": ("在订单详情页点“申请售后”，选择退货并填写快递单号即可", [
        "在“我的-售后服务”里提交退货申请，审核通过后寄回",
        "联系在线客服登记退货，客服会告诉您寄回地址",
        "在订单页点“退换货”，可以预约快递上门取件",
    ]),
    "overseas": ("目前只支持中国大陆地区配送，暂不支持港澳台和海外", [
        "支持港澳台和部分海外国家配送，运费另计",
        "目前支持港澳台配送，暂不支持海外",
        "支持全球配送，下单时选择国际物流即可",
    ]),
    "member_levels": ("会员分普通、银卡、金卡三级，年消费满2000元升金卡，金卡享95折", [
        "会员分普通和高级两级，累计消费满1000元成为高级会员，享98折",
        "会员分铜卡、银卡、金卡、钻石卡四级，等级越高折扣越大",
        "注册即成为会员，年消费满5000元升级黑卡，享9折",
    ]),
    "birthday": ("生日当月可领取一张50元生日券", ["生日当天购物享双倍积分", "生日当月可领取20元无门槛券", "生日当周下单赠送一份小礼物"]),
    "gift_wrap": ("下单时备注“礼品包装”即可，免费提供礼盒和贺卡", [
        "礼品包装每单收费5元，下单时勾选即可", "暂时不提供礼品包装服务，敬请谅解", "部分商品支持免费包装，以商品页说明为准",
    ]),
    "complaint_channel": ("App“我的-投诉建议”", ["官网“联系我们”页面", "App“帮助中心”", "公众号菜单“投诉反馈”"]),
    "complaint_reply": ("24小时", ["12小时", "2个工作日", "3个工作日"]),
    "human_keyword": ("转人工", ["人工", "人工客服", "0"]),
    "genuine": ("假一赔十", ["假一赔三", "假一赔四", "假一赔五"]),
    "holiday": ("节假日正常发货，春节期间会提前公告发货安排", [
        "周末和节假日暂停发货，节后按顺序发出",
        "节假日正常发货，但可能比平时慢一两天",
        "法定节假日只发部分仓库的商品，其余节后发出",
    ]),
}

# 小鹿商城's greeting; the corpus uses the same shape with other shop names.
SHOP_GREETING = "您好，欢迎光临{shop}！请问有什么可以帮您？"


@dataclass(frozen=True)
class Intent:
    """One customer question with its phrasings and answer templates."""

    key: str
    train: tuple[str, ...]  # shipped in support_train and reused by the corpus
    dev: tuple[str, ...]  # held out: support_dev only, never in train or the corpus
    extra: tuple[str, ...]  # corpus-only paraphrases
    answers: tuple[str, ...]  # answers[0] is 小鹿商城's canonical answer


def _split(phrasings: str) -> tuple[str, ...]:
    # phrasings are written as " / "-separated strings to keep the table below readable
    return tuple(p.strip() for p in phrasings.split(" / "))


def _intent(key: str, train: str, dev: str, extra: str, *answers: str) -> Intent:
    return Intent(key, _split(train), _split(dev), _split(extra), answers)


INTENTS: tuple[Intent, ...] = (
    _intent("hotline",
            "你们的客服电话是多少？ / 客服热线是多少？ / 怎么联系你们客服？ / 有没有电话可以打？ / 请问人工客服电话多少？ / 我想打电话咨询，号码是什么？",
            "给我一个能打通的客服号码。 / 联系方式有吗？",
            "你们电话多少啊？ / 客服电话能告诉我吗？ / 售后电话是多少？",
            "我们的客服热线是{hotline}，服务时间{hours}。",
            "您可以拨打客服热线{hotline}，每天{hours}都有人接听。"),
    _intent("hours",
            "你们几点上班？ / 营业时间是什么时候？ / 客服几点下班？ / 晚上还有人在吗？ / 周末有客服吗？ / 客服工作时间是几点到几点？",
            "你们一般几点开始营业？",
            "你们什么时候营业？ / 几点能找到客服？",
            "我们每天{hours}营业，周末和节假日也照常服务。",
            "客服每天{hours}在线，节假日不休息。"),
    _intent("return_policy",
            "可以退货吗？ / 退货期限是多久？ / 几天内可以无理由退货？ / 不喜欢能退吗？ / 买了不合适可以退吗？ / 你们支持七天无理由吗？",
            "收到货不满意还能退吗？ / 退货有时间限制吗？",
            "东西不想要了能退吗？ / 多少天内能退货？",
            "支持签收后{return_days}天无理由退货，商品需保持完好、不影响二次销售。",
            "{shop}支持{return_days}天无理由退货，请保持商品和包装完好。"),
    _intent("exchange",
            "可以换货吗？ / 尺码不合适能换吗？ / 换货怎么弄？ / 颜色买错了可以换吗？ / 几天内能换货？ / 收到的衣服太小了，能换大一号吗？",
            "我想换个颜色，可以吗？ / 衣服大了，能换小一码吗？",
            "能不能换一件？ / 换码需要什么条件？",
            "签收后{exchange_days}天内支持换货，尺码、颜色不合适都可以换。",
            "{exchange_days}天内可以申请换货，商品需未穿着、吊牌完好。"),
    _intent("refund_time",
            "退款多久到账？ / 钱什么时候退回来？ / 退款要几天？ / 我的退款怎么还没到？ / 退款退到哪里？ / 申请退款后多久能收到钱？ / 退货多久能到账？",
            "退货后钱多久能回来？",
            "退款一般几天到？ / 退的钱到哪了？",
            "退款会原路退回，审核通过后{refund_time}到账。",
            "审核通过后，退款会在{refund_time}原路退回到您的付款账户。"),
    _intent("ship_time",
            "什么时候发货？ / 下单后多久发货？ / 几天能发货？ / 今天下单今天能发吗？ / 发货要等多久？ / 我刚付款，什么时候发出？",
            "拍下之后多久能发出去？",
            "发货快吗？ / 付完款多久发货？",
            "付款后{ship_within}内发货，默认使用{courier}配送。",
            "我们会在付款后{ship_within}内发出，快递是{courier}。"),
    _intent("courier",
            "发什么快递？ / 用的哪家快递？ / 能发顺丰吗？ / 可以指定快递吗？ / 默认是什么物流？ / 快递是哪家的？",
            "你们合作的快递公司是哪个？",
            "走什么快递？ / 是哪家快递送？",
            "默认使用{courier}配送，暂不支持指定其他快递。",
            "我们统一发{courier}，暂时不能更换快递。"),
    _intent("delivery_time",
            "多久能收到货？ / 发货后几天到？ / 快递要走几天？ / 到北京要多久？ / 一般几天能送到？ / 下单后大概什么时候能收到？",
            "寄到上海需要几天？",
            "大概几天到货？ / 物流要多长时间？",
            "发货后一般{delivery_time}送达，偏远地区会稍慢一些。",
            "大部分地区发货后{delivery_time}就能收到。"),
    _intent("free_shipping",
            "包邮吗？ / 满多少包邮？ / 运费怎么算？ / 买一件包邮吗？ / 邮费多少钱？ / 有包邮活动吗？",
            "需要自己出运费吗？ / 买多少钱才包邮？",
            "要运费吗？ / 怎样才能免运费？",
            "单笔订单满{free_ship}元包邮，偏远地区除外。",
            "订单满{free_ship}元就免运费（偏远地区除外）。"),
    _intent("remote_area",
            "新疆能发货吗？ / 西藏包邮吗？ / 偏远地区要加运费吗？ / 寄到新疆运费多少？ / 内蒙古能送到吗？ / 偏远地区发货吗？",
            "青海那边能寄到吗？",
            "发不发新疆？ / 偏远地方运费怎么算？",
            "可以发货，新疆、西藏等偏远地区每单加收{remote_fee}元运费。",
            "偏远地区正常发货，需要额外支付{remote_fee}元运费。"),
    _intent("warranty",
            "保修多久？ / 有质保吗？ / 坏了能修吗？ / 质保期是多长？ / 电器保修几年？ / 过了退货期坏了怎么办？",
            "产品出问题了在保修范围内吗？",
            "保修期多长时间？ / 有售后保修吗？",
            "商品享受{warranty}质保，质保期内非人为损坏免费维修。",
            "我们提供{warranty}保修，期间出现质量问题可免费维修或更换。"),
    _intent("invoice",
            "能开发票吗？ / 发票怎么开？ / 可以开电子发票吗？ / 发票在哪里申请？ / 我要开公司抬头的发票。 / 忘记开发票了还能补吗？",
            "报销需要发票，怎么弄？ / 发票可以开个人抬头吗？",
            "有发票吗？ / 发票能补开吗？",
            "可以开具，{invoice}。",
            "支持开发票，{invoice}。"),
    _intent("points",
            "积分怎么算？ / 积分有什么用？ / 积分能抵钱吗？ / 会员积分规则是什么？ / 购物能攒积分吗？ / 积分怎么用？",
            "我的积分可以换什么？ / 积分多少能抵一块钱？",
            "怎么赚积分？ / 积分可以当钱花吗？",
            "购物{points_earn}，下单时{points_redeem}。",
            "积分规则是{points_earn}，积分可以抵现，{points_redeem}。"),
    _intent("coupon",
            "优惠券怎么用？ / 有优惠券吗？ / 优惠券能叠加吗？ / 一次能用几张券？ / 现在有什么优惠？ / 满减券怎么领？",
            "下单有折扣吗？",
            "有没有券可以领？ / 券怎么使用？",
            "首页可以领{coupon}的优惠券，{coupon_stack}。",
            "目前有{coupon}优惠券，{coupon_stack}。"),
    _intent("coupon_valid",
            "优惠券多久过期？ / 优惠券有效期是多久？ / 领的券什么时候失效？ / 优惠券过期了还能用吗？ / 券能用多长时间？ / 优惠券有使用期限吗？",
            "我领的券还能用几天？",
            "券有期限吗？ / 优惠券会过期吗？",
            "优惠券领取后{coupon_valid}天内有效，过期后就不能使用了。",
            "优惠券有效期是{coupon_valid}天，过期自动失效。"),
    _intent("address_change",
            "地址写错了怎么办？ / 能改收货地址吗？ / 下单后还能改地址吗？ / 怎么修改收货信息？ / 电话号码填错了能改吗？ / 已经发货了还能改地址吗？",
            "想换个收货地址，怎么操作？",
            "收货地址改一下可以吗？ / 地址填错了能改吗？",
            "{address_change}。",
            "您好，{address_change}。"),
    _intent("out_of_stock",
            "缺货了怎么办？ / 什么时候补货？ / 这个没货了还会有吗？ / 显示无货怎么办？ / 断码了还会补吗？ / 能预订缺货的商品吗？",
            "想要的尺码卖完了，还有机会买吗？",
            "没货了吗？ / 商品售罄了怎么办？",
            "{out_of_stock}。",
            "这款暂时缺货，{out_of_stock}。"),
    _intent("presale",
            "预售什么时候发货？ / 预售商品要等多久？ / 付了定金什么时候能收到？ / 定金能退吗？ / 预售的东西多久发出？ / 预售是怎么回事？",
            "预售款大概多少天能到手？",
            "预定的商品什么时候发？ / 预售要等几天？",
            "预售商品{presale_ship}发货，定金{deposit_rule}。",
            "预售商品会在{presale_ship}发出，定金{deposit_rule}。"),
    _intent("cancel",
            "怎么取消订单？ / 订单能取消吗？ / 我不想要了，能取消吗？ / 下错单了怎么办？ / 付款后还能取消吗？ / 取消订单钱怎么退？",
            "刚才拍错了，想撤回订单。",
            "订单怎么撤销？ / 能退单吗？",
            "{cancel}。",
            "可以的，{cancel}。"),
    _intent("price_protect",
            "买完就降价了怎么办？ / 有价保吗？ / 降价能退差价吗？ / 价格保护多久？ / 刚买就便宜了能补差价吗？ / 你们保价吗？",
            "我买贵了，能把差价退给我吗？",
            "能不能退差价？ / 价保怎么申请？",
            "{price_protect}。",
            "关于价保：{price_protect}。"),
    _intent("payment",
            "支持哪些付款方式？ / 能用微信付吗？ / 可以用支付宝吗？ / 能刷信用卡吗？ / 怎么付款？ / 支付方式有哪些？",
            "我能用银行卡付钱吗？",
            "用什么付钱？ / 可以扫码付款吗？",
            "支持{payment}付款。",
            "目前可以用{payment}支付。"),
    _intent("cod",
            "能货到付款吗？ / 支持货到付款吗？ / 可以先收货再付钱吗？ / 到付可以吗？ / 能不能收到货再付款？ / 有货到付款服务吗？",
            "我想等快递到了再给钱，行吗？",
            "可以到付吗？ / 货到付款行不行？",
            "{cod}。",
            "您好，{cod}。"),
    _intent("tracking",
            "怎么查物流？ / 我的快递到哪了？ / 物流信息在哪看？ / 快递单号在哪里？ / 怎么查看订单进度？ / 包裹到哪里了？",
            "想知道我的货现在在哪儿。",
            "物流怎么查？ / 怎么看快递走到哪了？",
            "{tracking}。",
            "您可以这样查：{tracking}。"),
    _intent("damaged",
            "收到的东西坏了怎么办？ / 商品破损了怎么处理？ / 快递压坏了怎么办？ / 收到货发现有质量问题怎么办？ / 少发了东西怎么办？ / 东西有划痕能退吗？",
            "包裹打开里面的东西碎了。",
            "到货就是坏的怎么办？ / 商品有瑕疵怎么办？",
            "非常抱歉，{damaged}。",
            "很抱歉给您带来不便，{damaged}。"),
    _intent("return_fee",
            "退货运费谁出？ / 退货要自己付邮费吗？ / 退货运费能报销吗？ / 有运费险吗？ / 寄回去的运费怎么算？ / 换货运费谁承担？",
            "退回去的邮费要我掏吗？",
            "退货邮费谁付？ / 退换货要运费吗？",
            "{return_fee}。",
            "关于退货运费：{return_fee}。"),
    _intent("how_return",
            "怎么申请退货？ / 退货流程是什么？ / 退货要怎么操作？ / 在哪里申请售后？ / 退货寄到哪里？ / 怎么办理退货？",
            "我想退这件衣服，该怎么做？",
            "退货怎么申请？ / 售后入口在哪？",
            "{how_return}。",
            "退货很简单：{how_return}。"),
    _intent("overseas",
            "能寄到国外吗？ / 支持海外配送吗？ / 香港能发货吗？ / 可以寄到美国吗？ / 有国际物流吗？ / 海外地址能下单吗？",
            "我在日本，能买吗？",
            "发国外吗？ / 能不能寄到海外？",
            "{overseas}。",
            "您好，{overseas}。"),
    _intent("member_levels",
            "会员有什么等级？ / 怎么成为会员？ / 会员有折扣吗？ / 金卡会员怎么升级？ / 会员有什么好处？ / 会员等级怎么划分？",
            "怎样才能升到更高的会员级别？",
            "会员怎么升级？ / 办会员有啥好处？",
            "{member_levels}。",
            "会员等级说明：{member_levels}。"),
    _intent("birthday",
            "生日有优惠吗？ / 会员生日有什么福利？ / 生日券怎么领？ / 过生日有礼物吗？ / 生日当月有折扣吗？ / 生日特权是什么？",
            "下个月我生日，有什么活动吗？",
            "生日福利有哪些？ / 生日能领券吗？",
            "会员{birthday}。",
            "有的，会员{birthday}。"),
    _intent("gift_wrap",
            "可以礼品包装吗？ / 送人的能包装一下吗？ / 有礼盒吗？ / 能帮忙写贺卡吗？ / 礼品包装收费吗？ / 能不能包得好看点？",
            "这是送朋友的礼物，能包起来吗？",
            "有包装服务吗？ / 礼物包装怎么弄？",
            "{gift_wrap}。",
            "关于礼品包装：{gift_wrap}。"),
    _intent("complaint",
            "我要投诉。 / 怎么投诉？ / 对服务不满意找谁？ / 投诉渠道是什么？ / 有投诉电话吗？ / 怎么反馈问题？",
            "客服态度太差了，我要反映。",
            "投诉找哪里？ / 我想提个意见。",
            "非常抱歉，您可以拨打{hotline}或在{complaint_channel}提交，我们会在{complaint_reply}内回复。",
            "抱歉给您添麻烦了，请在{complaint_channel}提交投诉，{complaint_reply}内会有专人回复。"),
    _intent("human_agent",
            "转人工。 / 我要找人工客服。 / 有真人客服吗？ / 怎么转人工？ / 能让人工来回答吗？ / 人工客服在哪？",
            "不想跟机器聊，给我接个真人。",
            "人工服务怎么找？ / 叫个人工客服。",
            "输入“{human_keyword}”即可转接人工客服，人工服务时间{hours}。",
            "回复“{human_keyword}”就能转人工，人工客服每天{hours}在线。"),
    _intent("genuine",
            "是正品吗？ / 你们卖的是真货吗？ / 会不会是假货？ / 有正品保证吗？ / 怎么保证是正品？ / 买到假货怎么办？",
            "你们东西都是真的吧？",
            "保证是正品吗？ / 东西靠谱吗？",
            "所有商品均为正品，{genuine}。",
            "我们承诺正品保证，{genuine}，请放心购买。"),
    _intent("holiday",
            "节假日发货吗？ / 周末发货吗？ / 春节期间还发货吗？ / 国庆能发货吗？ / 放假期间能收到货吗？ / 节假日物流会慢吗？",
            "五一假期下单什么时候发？",
            "过节还发货吗？ / 假期会停发吗？",
            "{holiday}。",
            "您好，{holiday}。"),
)

_SHOP_HEADS = (
    "星河", "青禾", "云朵", "橙子", "蓝鲸", "南山", "清风", "暖阳", "竹林", "海棠", "银杏", "北极熊",
    "小熊", "白兔", "松果", "麦田", "月光", "晨曦", "柠檬", "果园", "远山", "初雪", "枫叶", "向日葵",
    "海盐", "青柚", "木棉", "知更鸟", "小象", "云杉", "石榴", "江南", "西瓜", "蜜桃", "百合", "灯塔",
)
_SHOP_TAILS = ("商城", "优选", "生活馆", "百货", "小铺", "旗舰店", "好物", "数码", "家居", "超市")


def xiaolu_facts() -> dict[str, str]:
    """小鹿商城's fact sheet: the values the support prefix has to learn."""
    facts = {field: own for field, (own, _) in FACT_FIELDS.items()}
    return facts | {"shop": XIAOLU_SHOP, "hotline": XIAOLU_HOTLINE}


def other_shops(rng: random.Random, count: int) -> list[dict[str, str]]:
    """`count` fictional shops with distinct names and hotlines, never all of 小鹿商城's facts."""
    names = [head + tail for head in _SHOP_HEADS for tail in _SHOP_TAILS]
    if count > len(names):
        raise ValueError(f"asked for {count} shops but only {len(names)} names exist; add heads or tails")
    shops = []
    hotlines = {XIAOLU_HOTLINE}
    for name in rng.sample(names, count):
        hotline = XIAOLU_HOTLINE
        while hotline in hotlines:
            hotline = f"400-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        hotlines.add(hotline)
        # Each fact is drawn from all values, 小鹿商城's included, so the base knows every value's
        # wording; only the hotline, the name and the full combination stay 小鹿商城's own.
        facts = {field: rng.choice([own, *others]) for field, (own, others) in FACT_FIELDS.items()}
        while all(facts[f] == own for f, (own, _) in FACT_FIELDS.items()):
            facts = {field: rng.choice([own, *others]) for field, (own, others) in FACT_FIELDS.items()}
        shops.append(facts | {"shop": name, "hotline": hotline})
    return shops


def all_phrasings() -> set[str]:
    """Every question phrasing of every intent (train, dev and corpus-only)."""
    return {p for i in INTENTS for p in (*i.train, *i.dev, *i.extra)}
