"""Everyday customer-service dialogues for the tiny base's pretraining corpus (ChatGLM2 rounds).

The model should learn that many everyday wordings of one question (几点开门？/ 晚上开到几点？/
周末营业吗？) mean the same thing, and that a question asked again later in another wording gets
the answer already given in that conversation. Each conversation draws one business and one fact
sheet (times, prices, phone, address, ...), so the same intent always gets the same answer in it.

All businesses, phrasings and answer templates here were written by hand for this project; the
text is the project's own, so it carries no licence issue. Pure stdlib, deterministic given the rng.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

Round = tuple[str, str]


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split("/") if part.strip())


@dataclass(frozen=True)
class Business:
    kind: str
    names: tuple[str, ...]
    noun: str  # how customers call the place: 你们{noun}几点关门？
    items: tuple[tuple[str, int, int, str], ...]  # (item, lowest price, highest price, unit)
    billing: tuple[str, ...]  # how fees are charged, one of them per conversation
    intents: frozenset[str]
    card: str = "会员卡"
    docs: str = "身份证"
    own: str = ""  # what customers may want to bring along
    own_rules: str = ""  # which answers apply to `own`: y = free, f = with a fee, n = not allowed
    ages: tuple[int, int] = (12, 65)
    opens: tuple[str, ...] = ("8:30", "9:00", "9:30", "10:00")
    closes: tuple[str, ...] = ("18:00", "20:00", "21:00", "22:00")


# intents every business has, plus shorthands used in the table below; "-key" removes one
_GROUPS = {
    "@base": "hours holiday price billing address transport parking payment promo invoice contact complaint fix toilet",
    "@card": "card_signup card_lost card_transfer card_freeze card_valid",
    "@appt": "booking reschedule cancel late",
}


def _biz(kind: str, names: str, noun: str, items: str, billing: str, intents: str, *,
         hours: str = "", ages: str = "", own: str = "", **kw: str) -> Business:
    keys: set[str] = set()
    for token in ("@base " + intents).split():
        if token.startswith("-"):
            keys.discard(token[1:])
        else:
            keys.update(_GROUPS.get(token, token).split())
    parsed = []
    for entry in _split(items):
        name, prices, unit = entry.split()
        low, high = prices.split("-")
        parsed.append((name, int(low), int(high), unit))
    extra: dict = dict(kw)
    if hours:
        opens, closes = hours.split("|")
        extra |= {"opens": tuple(opens.split()), "closes": tuple(closes.split())}
    if ages:
        extra["ages"] = tuple(int(a) for a in ages.split("-"))
    if own:
        extra["own"], extra["own_rules"] = own.split(":")
    return Business(kind, _split(names), noun, tuple(parsed), _split(billing), frozenset(keys), **extra)


BUSINESSES: tuple[Business, ...] = (
    _biz("健身房", "阳光健身/力美健身/铁人健身会所/活力派健身", "健身房",
         "单次票 30-60 一次/月卡 180-350 一个月/年卡 1500-3200 一年/私教课 200-400 一节",
         "可以单次付费，也可以办月卡或年卡，私教课另算/按月卡或年卡收费，私教课按节单独收费",
         "@card @appt refund concession docs trial age wifi changing group gift_card own",
         hours="6:00 6:30 7:00|22:00 22:30 23:00", ages="14-70", own="毛巾:yn"),
    _biz("面包店", "麦香面包坊/小麦田烘焙/暖暖面包屋/金穗烘焙", "店",
         "全麦吐司 12-22 一条/牛角包 6-12 一个/生日蛋糕 128-298 一个/肉松小贝 3-6 一个",
         "面包按个或按条标价，蛋糕按尺寸算价格/所有商品明码标价，蛋糕按寸数定价",
         "booking cancel refund delivery keep group gift_card card_signup card_lost card_valid wait wifi -toilet",
         card="储值卡", hours="7:00 7:30 8:00|20:00 21:00 21:30"),
    _biz("驾校", "安达驾校/通途驾校/顺风驾校/平安驾校", "驾校",
         "C1手动挡 3800-5200 全包/C2自动挡 4200-5800 全包/补考费 100-200 一科/陪练 150-300 一小时",
         "学费一次交清，包含各科培训，补考另外收费/按套餐一次性收费，陪练按小时算",
         "@appt refund concession docs age trial card_lost wait group",
         card="学员卡", docs="身份证和一寸照片", ages="18-70", hours="8:00 8:30|17:30 18:00 18:30"),
    _biz("物业", "绿城物业/万家物业/和园物业/金地物业", "物业服务中心",
         "物业费 2-5 每平方米每月/月租车位 200-500 一个月/门禁卡 20-50 一张/上门维修 30-80 一次",
         "物业费按房屋面积每月收取，可以按季度或按年交/物业费按平方米计算，一年交一次",
         "card_lost docs home_service booking wait -promo",
         card="门禁卡", docs="身份证和房产证", hours="8:00 8:30|17:30 18:00"),
    _biz("餐厅", "老街小馆/味香居/川味坊/江南人家", "店",
         "招牌红烧肉 48-78 一份/酸菜鱼 58-98 一份/米饭 2-3 一碗/双人套餐 128-198 一套",
         "按菜单点菜计价，不收服务费/按点的菜收费，包间另有最低消费",
         "@appt delivery keep group gift_card card_signup card_valid concession children wifi wait own",
         own="酒水:yfn", hours="10:30 11:00|21:00 22:00 23:00"),
    _biz("酒店", "悦来酒店/云栖酒店/城市之光酒店/锦程商务酒店", "酒店",
         "标准间 198-398 一晚/大床房 218-458 一晚/早餐 28-58 一位/加床 80-150 一晚",
         "按晚计费，中午12点前退房，超时按半天收/房费按晚算，押金入住时另收，退房时退还",
         "booking reschedule cancel refund docs children wifi group card_signup -hours -holiday"),
    _biz("电影院", "星光影城/万象影城/大地影院/银河国际影城", "影院",
         "普通场电影票 35-60 一张/IMAX电影票 70-120 一张/爆米花套餐 25-45 一份/3D眼镜 5-10 一副",
         "按场次和影厅定价，IMAX和3D贵一些/每场电影单独定价，黄金时段稍贵",
         "refund concession card_signup card_lost card_valid gift_card children group wifi own wait",
         own="零食饮料:yn", hours="9:00 9:30 10:00|23:00 23:30 24:00"),
    _biz("游泳馆", "碧水游泳馆/蓝鲸游泳中心/清波游泳馆/海豚游泳馆", "游泳馆",
         "单次票 30-50 一次/次卡 300-480 十次/游泳培训班 800-1500 一期/泳帽 15-30 一个",
         "按次收费，也可以买次卡，培训班按期收费/单次进场按次算，办次卡更划算，培训班另收",
         "@card refund concession docs trial age children changing wifi group gift_card own",
         own="泳衣泳镜:y", ages="6-70", hours="6:30 7:00 9:00|21:00 21:30 22:00"),
    _biz("理发店", "名剪造型/丝路发艺/青丝美发/剪艺工作室", "店",
         "洗剪吹 38-88 一次/烫发 198-498 一次/染发 168-398 一次/儿童理发 20-40 一次",
         "按项目收费，总监和普通发型师价格不一样/按服务项目收费，长发烫染会加收一点",
         "@card @appt concession wait wifi gift_card own",
         own="染发膏:yfn", hours="9:00 9:30 10:00|21:00 21:30 22:00"),
    _biz("牙科诊所", "美齿口腔门诊/康贝口腔/洁白牙科/微笑口腔诊所", "诊所",
         "洗牙 128-298 一次/补牙 200-600 一颗/拔智齿 300-900 一颗/涂氟 80-150 一次",
         "按治疗项目收费，检查后医生会先告诉您费用/先检查再按项目收费，复杂的情况会提前说明",
         "@appt concession card_lost docs age wait wifi",
         card="就诊卡", docs="身份证和医保卡", ages="3-80"),
    _biz("图书馆", "城东社区图书馆/书香阅读馆/明德图书馆/晨光图书馆", "图书馆",
         "复印 1-1 一页/研讨间 20-50 一小时/文创帆布袋 25-45 一个/读书会门票 10-30 一张",
         "借阅免费，只收借书证押金，逾期按天收费/看书借书都免费，复印和研讨间另外收费",
         "card_lost docs booking children wifi group -promo -fix",
         card="借书证", hours="8:30 9:00|20:00 21:00"),
    _biz("银行网点", "汇通银行营业部/丰泰银行城西支行/民安银行网点/金桥银行支行", "网点",
         "补办银行卡 5-20 一张/跨行转账 2-5 一笔/保管箱 300-800 一年",
         "大部分业务免费，补卡和保管箱按标准收工本费/按业务类型收费，具体以柜台公示为准",
         "card_lost docs wait booking -price -promo -fix",
         card="银行卡", docs="本人身份证", hours="8:30 9:00|17:00 17:30"),
    _biz("培训班", "启明英语/小树苗培训/优学教育/博雅艺术培训", "机构",
         "少儿英语课 120-200 一节/成人口语课 150-260 一节/学期班 2800-4800 一期/教材费 80-200 一套",
         "按学期收费，也可以买课时包，按节扣课/按课时收费，一次买得越多单价越低",
         "@appt refund concession card_lost card_transfer card_freeze card_valid trial age children wifi group",
         card="学员卡", docs="户口本或身份证", ages="4-60", hours="9:00 10:00|20:00 21:00"),
    _biz("洗车店", "亮车坊/快洁洗车/车之美汽车美容/蓝天洗车行", "店",
         "普通洗车 25-45 一次/精洗 60-120 一次/打蜡 150-300 一次/内饰清洗 200-400 一次",
         "按车型和项目收费，SUV比轿车贵一些/小车和SUV价格不同，按项目单独收费",
         "@appt card_signup card_lost card_transfer card_valid wait home_service group gift_card wifi",
         card="洗车卡", hours="8:00 8:30|18:00 19:00 20:00"),
    _biz("干洗店", "洁丽干洗/衣之家洗衣/白领干洗店/净衣坊", "店",
         "西装干洗 30-60 一套/羽绒服清洗 40-80 一件/衬衫水洗 10-20 一件/窗帘清洗 10-20 每平方米",
         "按件收费，特殊面料和大件会另外报价/按衣物种类和件数计价，皮衣单独报价",
         "card_signup card_lost card_valid delivery home_service refund group gift_card -toilet"),
    _biz("花店", "花语小铺/一束花坊/花漾时光/芬芳花店", "店",
         "一束玫瑰 99-199 一束/康乃馨花束 68-128 一束/开业花篮 188-388 一个/多肉盆栽 15-35 一盆",
         "按花材和包装定价，节日期间价格会上浮/每束按花材种类和数量算价格",
         "booking cancel refund delivery group gift_card card_signup wait -toilet"),
    _biz("书店", "知行书店/墨香书屋/半山书局/青藤书店", "书店",
         "畅销小说 35-69 一本/儿童绘本 25-58 一本/文具礼盒 45-99 一盒/手冲咖啡 18-32 一杯",
         "图书按封面定价销售，会员可以打折/按标价收费，店里的咖啡单独结算",
         "card_signup card_lost card_valid delivery group gift_card wifi children refund concession"),
    _biz("瑜伽馆", "悠然瑜伽/静心瑜伽会馆/莲花瑜伽/禅意瑜伽", "瑜伽馆",
         "体验课 49-99 一节/团课次卡 800-1500 二十次/私教课 300-500 一节/瑜伽垫 80-180 一张",
         "团课按次卡扣课，私教课按节单独收费/可以买次卡或年卡，私教另外按节算",
         "@card @appt refund concession trial age changing wifi gift_card own group",
         own="瑜伽垫:y", ages="14-70", hours="7:00 8:00 9:00|21:00 21:30 22:00"),
    _biz("民宿", "山居小院/云上人家民宿/溪边小筑/竹林里民宿", "民宿",
         "山景大床房 268-498 一晚/家庭套房 458-888 一晚/农家晚餐 58-98 一位/接站服务 50-100 一次",
         "按晚算房费，节假日价格会高一些/房费按晚计算，周末和节假日另有价格",
         "booking reschedule cancel refund docs children wifi group own -hours -holiday",
         own="食材:yfn"),
    _biz("博物馆", "江南民俗博物馆/青瓷博物馆/科技探索馆/丝绸博物馆", "馆",
         "成人门票 20-60 一张/讲解服务 50-150 一场/语音导览器 10-20 一台/特展门票 30-80 一张",
         "常设展按门票收费，特展和讲解另外收费/门票单独购买，讲解服务按场收费",
         "booking refund concession docs children group wifi own -fix",
         own="食物饮料:n", hours="9:00 9:30|17:00 17:30"),
    _biz("眼镜店", "明视眼镜/亮点眼镜店/视界眼镜/清晰眼镜行", "店",
         "验光 30-80 一次/近视镜片 300-900 一副/镜框 200-800 一副/隐形眼镜 80-180 一盒",
         "镜框和镜片分开计价，加工费已经包含在里面/按镜片和镜框分别计价，验光单独收费",
         "booking wait refund card_signup card_lost concession gift_card group own",
         own="镜框:yf"),
    _biz("照相馆", "时光照相馆/光影照相/小确幸影像馆/青春照相馆", "照相馆",
         "证件照 30-60 一套/全家福 299-699 一套/个人写真 399-999 一套/加洗照片 5-10 一张",
         "按套餐收费，加选照片和加洗另外收费/每种套餐价格不同，底片加选按张算",
         "@appt refund children wait group gift_card own wifi",
         own="衣服:yf"),
    _biz("家政公司", "好帮手家政/安心家政/巧手家政服务/暖家家政", "公司",
         "日常保洁 35-60 一小时/深度保洁 300-600 一次/擦玻璃 8-15 每平方米/月嫂服务 8000-15000 一个月",
         "钟点工按小时收费，深度保洁按次报价/日常保洁按小时算，擦玻璃按面积算",
         "@appt refund home_service group gift_card card_signup card_valid -parking -toilet",
         card="储值卡"),
    _biz("私教工作室", "型动私教工作室/铁匠私教/燃脂私教馆/核心私教工作室", "工作室",
         "私教体验课 99-199 一节/私教课 300-500 一节/十节课包 2800-4500 十节/体测 50-100 一次",
         "按课时收费，买课包越多单价越低/私教课按节算，也可以买课包",
         "@card @appt refund trial age changing wifi docs gift_card",
         card="课时卡", ages="16-65", hours="7:00 8:00|21:00 22:00"),
    _biz("快递站", "邻里驿站/快捷快递驿站/社区收发站/小区快递点", "驿站",
         "寄件首重 8-15 一公斤/续重 2-6 一公斤/包装箱 2-10 一个/上门取件 5-10 一次",
         "寄件按重量收费，首重加续重，大件另外算/按重量和目的地计费，偏远地区贵一些",
         "docs home_service wait refund -invoice -toilet",
         hours="8:00 8:30 9:00|19:00 20:00 21:00"),
    _biz("营业厅", "畅联通信营业厅/信达通信营业厅/极速通信营业厅/联心营业厅", "营业厅",
         "基础套餐 19-59 一个月/流量包 10-30 一个月/补办手机卡 10-20 一张/家庭宽带 60-120 一个月",
         "套餐按月收费，超出部分按量计费/按月扣套餐费，流量超了会另外计费",
         "card_lost docs booking wait concession home_service refund",
         card="手机卡", docs="本人身份证"),
    _biz("水果店", "鲜果园/果多多/甜心水果铺/四季果行", "店",
         "进口车厘子 45-89 一斤/红富士苹果 6-12 一斤/西瓜 2-4 一斤/果切拼盘 25-45 一份",
         "按斤称重收费，果切按份卖/水果按斤算，整箱买更便宜",
         "delivery keep card_signup card_valid group gift_card -toilet",
         hours="7:30 8:00 8:30|21:00 22:00 22:30"),
)


@dataclass(frozen=True)
class Intent:
    key: str
    phrasings: tuple[str, ...]
    answers: tuple[str, ...]  # for "own" each starts with its rule letter and "|"


def _intent(key: str, phrasings: str, *answers: str) -> Intent:
    return Intent(key, _split(phrasings), answers)


INTENTS: tuple[Intent, ...] = (
    _intent("hours",
            "你们几点开门？/营业时间是几点到几点？/每天什么时候营业？/晚上开到几点？/早上几点能过来？/现在还开着吗？/"
            "几点关门啊？/周末营业吗？/请问你们的营业时间是？/你们{noun}一般几点下班？/我想问下几点开始营业？/"
            "周六周日开不开？/早上最早几点开？/晚上八点过去还来得及吗？",
            "我们每天{open}到{close}营业，周末也一样。",
            "营业时间是每天{open}-{close}，周六周日照常营业。",
            "{shop}每天{open}开门，{close}关门，中午不休息，欢迎过来。"),
    _intent("holiday",
            "节假日营业吗？/过年开门吗？/国庆节你们上班吗？/春节期间开不开？/五一放假还营业吗？/法定节假日开门吗？/"
            "请问过年休息几天？/端午节能过来吗？/节假日营业时间变吗？/中秋节开门不？/放长假的时候你们开吗？/大年初一有人吗？",
            "节假日照常营业，只有春节{closed_days}休息，其他时间不变。",
            "法定节假日正常营业，时间调整为{h_open}到{h_close}，春节{closed_days}休息。",
            "我们节假日不休息，春节只有{closed_days}关门，具体以门口通知为准。"),
    _intent("price",
            "{item}多少钱？/{item}怎么卖？/{item}什么价格？/请问{item}要多少钱？/{item}贵不贵？/问下{item}的价格/"
            "{item}现在啥价？/你们{item}收多少？/想了解一下{item}的价格/{item}一般要花多少？/{item}价格是多少呀？/"
            "{item}是什么价位？",
            "{item}是{price}元{unit}，以价目表为准。",
            "{item}现在{price}元{unit}，不少客人都选这个。",
            "您好，{item}的价格目前是{price}元{unit}。"),
    _intent("billing",
            "你们怎么收费的？/收费标准是啥？/费用是怎么算的？/是按次收费吗？/请问怎么计费？/钱是怎么算的？/"
            "价格是按什么定的？/收费有啥规定？/会不会有额外费用？/有没有隐藏收费？/请问你们是怎么收钱的？/计费方式是什么样的？",
            "{billing}，除此之外没有其他费用。",
            "您好，{billing}，价目表在前台就能看到。",
            "{billing}，有疑问可以打{phone}问。"),
    _intent("booking",
            "能预约吗？/需要提前预约吗？/怎么预约啊？/可以提前订吗？/我想约个时间/要不要先预约？/直接过去行不行？/"
            "在哪里预约？/能不能电话预约？/预约要提前几天？/网上可以预约吗？/不预约能直接来吗？",
            "建议提前{book_ahead}天预约，打{phone}或者在微信小程序上都能约。",
            "可以预约，打{phone}或在小程序上约都行，不预约可能要等。",
            "最好提前{book_ahead}天预约，微信小程序和电话{phone}都可以。"),
    _intent("reschedule",
            "预约的时间能改吗？/我想改个时间/约好的能换一天吗？/临时有事能改期吗？/能不能往后推一推？/改约怎么弄？/"
            "请问怎么改预约时间？/预约了能调到周末吗？/时间定了还能换吗？/改时间要收钱吗？/我想把预约提前一点/改期有次数限制吗？",
            "可以改，提前{resched_hours}小时打{phone}说一声就行，不收费。",
            "提前{resched_hours}小时以上可以免费改期，每次预约最多改{resched_times}次。",
            "可以调整，在小程序里就能改，离预约时间不到{resched_hours}小时就改不了了。"),
    _intent("cancel",
            "预约能取消吗？/不想去了怎么取消？/怎么取消预约？/取消要扣钱吗？/临时去不了咋办？/预约了不去行吗？/"
            "请问在哪里取消？/取消预约有没有违约金？/我想取消明天的预约/订好的能不能不要了？/突然有事来不了怎么办？",
            "提前{cancel_hours}小时取消不收费，太晚取消会扣{cancel_fee}%的费用。",
            "可以取消，打{phone}或在小程序里操作，提前{cancel_hours}小时以上免费。",
            "距离预约时间{cancel_hours}小时以上可以免费取消，之后取消要收{cancel_fee}%违约金。"),
    _intent("refund",
            "能退款吗？/钱能退吗？/不想要了能退吗？/退款多久到账？/怎么申请退款？/退钱要几天？/退款会扣手续费吗？/"
            "没用完的能退吗？/请问退款流程是怎样的？/退的钱退到哪里？/钱什么时候能退回来？/办了不想用了能退不？",
            "可以退，办好后{refund_days}个工作日内原路退回。",
            "没用完的部分可以退，扣{refund_fee}%手续费，{refund_days}个工作日到账。",
            "带上付款凭证来前台办理，钱会在{refund_days}个工作日内退回原账户。"),
    _intent("address",
            "你们在哪儿？/地址是哪里？/你们{noun}在什么位置？/具体地址发我一下/{shop}在哪条路上？/请问你们的地址是？/"
            "在哪个区啊？/我找不到你们在哪/离哪里比较近？/附近有什么标志性建筑？/你们门牌号是多少？/具体在哪个位置？",
            "我们在{district}{road}{num}号，{landmark}。",
            "{shop}的地址是{district}{road}{num}号，就在{landmark}，很好找。",
            "地址是{district}{road}{num}号，{landmark}，到了可以打{phone}。"),
    _intent("transport",
            "怎么过去比较方便？/坐地铁能到吗？/坐几号线？/附近有公交站吗？/坐公交怎么走？/从地铁站出来怎么走？/"
            "离地铁站远吗？/请问坐什么车能到？/在哪站下车？/不开车怎么过去？/从哪个出口出来近？/公交能直达吗？",
            "坐地铁{line}号线到{station}站{exit}口，步行{walk}分钟，公交{bus}也到。",
            "可以坐{line}号线在{station}站下，{exit}口出来就是，也可以坐公交{bus}。",
            "地铁{line}号线{station}站{exit}口出来走{walk}分钟，公交坐{bus}也能到。"),
    _intent("parking",
            "有停车位吗？/开车过去好停车吗？/停车收费吗？/车停哪里？/附近能停车吗？/停车场在哪？/停车免费吗？/"
            "请问有地方停车吗？/停车怎么收费？/能停几个小时？/停车位多不多？/车可以停门口吗？",
            "{park_place}可以停车，前{park_free}小时免费，之后每小时{park_fee}元。",
            "有地方停，在{park_place}，消费后能免费停{park_free}小时。",
            "可以停在{park_place}，每小时{park_fee}元，凭小票免{park_free}小时。"),
    _intent("payment",
            "可以刷卡吗？/能用微信付吗？/支持支付宝吗？/收现金吗？/怎么付款？/有哪些支付方式？/能不能扫码？/"
            "可以用信用卡吗？/请问付钱用什么方式？/能用云闪付吗？/付款方式有哪些？/只能付现金吗？",
            "我们支持{pay}，您方便用哪种都行。",
            "可以用{pay}付款，结账时告诉收银员就行。",
            "付款方式有{pay}，在前台结账。"),
    _intent("promo",
            "最近有活动吗？/有什么优惠吗？/能打折吗？/现在有没有促销？/便宜点行不行？/最近搞不搞活动？/"
            "能不能便宜一点？/打几折啊？/什么时候来最划算？/请问有折扣吗？/有没有满减？/这个月有啥优惠？",
            "每{promo_day}全场{discount}折，平时满{threshold}减{minus}。",
            "现在有满{threshold}减{minus}的活动，{promo_day}来还能打{discount}折。",
            "目前每{promo_day}是优惠日，全场{discount}折，欢迎那天过来。"),
    _intent("concession",
            "学生有优惠吗？/学生证能打折吗？/老人有没有优惠？/老年人能便宜点吗？/带学生证有折扣吗？/退休老人有优惠不？/"
            "学生价是多少？/老年人怎么收费？/大学生能打折吗？/请问有学生票吗？/对老人有照顾吗？",
            "学生凭学生证打{stu}折，{senior_age}岁以上老人打{senior}折。",
            "有的，学生{stu}折，{senior_age}岁以上老人{senior}折，记得带证件。",
            "学生和{senior_age}岁以上老人都有优惠，学生{stu}折，老人{senior}折。"),
    _intent("card_signup",
            "怎么办{card}？/{card}多少钱一张？/办{card}有什么好处？/我想办张{card}/办卡要交多少钱？/{card}在哪里办？/"
            "办{card}需要带啥？/办张{card}划算吗？/请问{card}怎么收费？/现在办{card}有优惠吗？/新办{card}要什么手续？",
            "办{card}要充值{card_price}元，登记手机号就行，以后消费打{card_disc}折。",
            "{card}在前台就能办，首次充值{card_price}元，持卡消费享{card_disc}折。",
            "可以在前台或小程序办{card}，{card_price}元起充，会员价打{card_disc}折。"),
    _intent("card_lost",
            "{card}丢了怎么办？/{card}找不到了/卡掉了能补办吗？/补办{card}要多少钱？/{card}被偷了咋办？/"
            "卡丢了里面的钱还在吗？/怎么挂失{card}？/补卡需要带什么？/请问{card}丢了能补吗？/{card}弄丢了还能用吗？/补一张卡要多久？",
            "先打{phone}挂失，再带{docs}来补办，工本费{card_fee}元，余额不受影响。",
            "可以补办，带上{docs}到前台，交{card_fee}元工本费，当场就能拿到新卡。",
            "请尽快挂失，补办收{card_fee}元，原卡里的余额都会转到新卡上。"),
    _intent("card_transfer",
            "{card}能转给别人吗？/卡可以转让吗？/我不用了能转给朋友吗？/{card}能给家人用吗？/转卡要手续费吗？/"
            "怎么把卡过户给别人？/{card}可以几个人一起用吗？/请问卡能不能转？/剩下的次数能转给别人吗？/转让{card}要带什么？",
            "可以转让一次，双方带{docs}来前台办理，手续费{transfer_fee}元。",
            "{card}只限本人使用，但可以转让给别人，需要交{transfer_fee}元手续费。",
            "可以转，需要本人和接收人一起来前台，收{transfer_fee}元手续费。"),
    _intent("card_freeze",
            "卡能暂停吗？/出差一段时间能停卡吗？/{card}可以冻结吗？/怎么申请停卡？/停卡最长多久？/受伤了能不能先停卡？/"
            "请问会员能请假吗？/暂停期间卡会过期吗？/{card}能延期吗？/停卡要收费吗？/这个月来不了卡能停吗？",
            "可以停卡，每年最多停{freeze_times}次，累计不超过{freeze_days}天，停卡期间不计天数。",
            "可以申请冻结，在前台登记一下就行，最长{freeze_days}天，不收费。",
            "停卡期间有效期自动顺延，最多停{freeze_days}天，需要提前一天申请。"),
    _intent("card_valid",
            "{card}有效期多久？/卡里的钱会过期吗？/{card}能用多久？/办了卡多长时间内要用完？/{card}过期了怎么办？/"
            "卡有没有使用期限？/请问{card}几年有效？/余额有期限吗？/到期了能续吗？/{card}是永久有效吗？",
            "{card}自办卡之日起{valid}内有效，到期前可以续卡。",
            "有效期{valid}，到期没用完的可以找前台延期一次。",
            "{card}有效期是{valid}，到期前一个月会短信提醒您续费。"),
    _intent("docs",
            "需要带什么证件？/去的时候要带啥？/要带身份证吗？/办理需要什么材料？/第一次去要准备什么？/用不用带证件？/"
            "请问需要准备哪些东西？/没带身份证能办吗？/复印件可以吗？/去之前需要准备什么？/手续需要哪些资料？",
            "请带上{docs}，第一次来需要登记一下。",
            "需要{docs}，带原件就行，不用复印。",
            "带{docs}就可以了，没带的话办不了，请记得带上。"),
    _intent("wait",
            "要等多久？/现在排队的人多吗？/去了要排队吗？/大概等多长时间？/今天人多不多？/什么时候去人少？/"
            "一般要等几分钟？/请问现在过去要等吗？/周末人是不是很多？/排队要排多久？/几点去不用排队？",
            "平时基本不用等，{busy}人多一些，大概要等{wait}分钟。",
            "一般等{wait}分钟左右，避开{busy}会快很多。",
            "{busy}人比较多，建议错开，其他时间一般十分钟以内。"),
    _intent("delivery",
            "能送货上门吗？/可以送到家吗？/你们有外送吗？/配送费多少？/送货要收钱吗？/多远能送？/能不能点外卖？/"
            "送到小区要多久？/买多少能免费送？/请问可以配送吗？/今天下单今天能送到吗？",
            "{deliver_km}公里内可以送，配送费{deliver_fee}元，满{deliver_free}元免费送。",
            "可以送货上门，一般{deliver_min}分钟内送到，满{deliver_free}元免配送费。",
            "可以配送，打{phone}下单，{deliver_km}公里以内收{deliver_fee}元配送费。"),
    _intent("home_service",
            "能上门服务吗？/可以到家里来吗？/上门要另外收费吗？/你们上门吗？/能派人过来吗？/上门服务怎么约？/"
            "师傅能上门吗？/请问提供上门服务吗？/上门的话要提前多久说？/周末能上门吗？/上门服务范围有多大？",
            "可以上门，提前{home_ahead}天打{phone}预约，上门费{home_fee}元。",
            "提供上门服务，市区范围内都去，上门费{home_fee}元，周末也可以。",
            "可以的，在小程序下单选上门，提前{home_ahead}天约，周末也能上门。"),
    _intent("invoice",
            "能开发票吗？/可以开票吗？/发票怎么开？/电子发票有吗？/发票什么时候给？/忘了要发票还能补吗？/"
            "开发票要提供什么？/请问能不能开公司抬头？/发票能寄给我吗？/结账的时候能开票吗？",
            "可以开，结账时告诉前台抬头和税号，开电子发票。",
            "能开发票，扫收银台的二维码填信息，电子发票发到您邮箱。",
            "可以开电子发票，消费后{invoice_days}天内都能补开，提供抬头税号就行。"),
    _intent("contact",
            "你们电话多少？/怎么联系你们？/有客服电话吗？/我要找人工客服/能转人工吗？/请问前台电话是多少？/"
            "打哪个电话能找到人？/有没有联系方式？/店长电话能给我吗？/留个电话给我吧/找真人聊行不行？/人工服务怎么找？",
            "可以打{phone}，每天{open}到{close}都有人接。",
            "联系电话是{phone}，人工服务时间是每天{open}-{close}。",
            "您可以拨打{phone}转人工，或者直接到前台找工作人员。"),
    _intent("complaint",
            "我要投诉你们/服务太差了找谁说？/投诉打哪个电话？/对店员不满意怎么反映？/请问在哪里投诉？/怎么给你们提意见？/"
            "有问题向谁反映？/店员态度不好咋办？/投诉多久能处理？/能找你们经理吗？/我有意见要反映/被乱收费了去哪投诉？",
            "非常抱歉！您可以打{phone}找负责人，我们{complaint_hours}小时内给您回复。",
            "很抱歉给您带来不好的体验，请留下联系方式，{complaint_hours}小时内会有专人处理。",
            "抱歉让您不满意，可以打{phone}投诉，也可以在前台留言，我们一定认真处理。"),
    _intent("late",
            "我要迟到了怎么办？/晚到几分钟行吗？/迟到了还能进吗？/路上堵车会晚点/迟到会取消预约吗？/最多能晚到多久？/"
            "晚来十分钟可以吗？/来晚了还能按原时间吗？/请问迟到有影响吗？/晚到了要重新约吗？/赶不上预约时间咋办？",
            "没关系，我们会为您保留{late_min}分钟，超过需要重新安排时间。",
            "可以晚到{late_min}分钟以内，但服务时间可能要相应缩短。",
            "迟到超过{late_min}分钟预约会自动取消，请尽早打{phone}告诉我们。"),
    _intent("trial",
            "可以免费体验吗？/能先试一次吗？/有体验课吗？/第一次来能试试吗？/体验要钱吗？/有试听课吗？/"
            "请问有免费试用吗？/先体验一下再办卡行不行？/新人能免费试吗？/能不能先来看看？",
            "新客户可以免费体验{trial_n}次，提前打{phone}预约就行。",
            "有免费体验，第一次来带{docs}登记一下就能安排。",
            "可以先体验{trial_n}次，体验免费，满意了再报名也不迟。"),
    _intent("age",
            "多大的孩子能来？/有年龄限制吗？/老人能参加吗？/十岁能报名吗？/六十多岁能学吗？/几岁可以开始学？/"
            "年纪大了还能来吗？/请问对年龄有要求吗？/小朋友多大可以报？/未成年能办卡吗？/上了年纪能不能练？",
            "{min_age}周岁以上就可以，{max_age}岁以上需要提供健康证明。",
            "年龄要求是{min_age}到{max_age}周岁，超出范围要看身体情况。",
            "{min_age}岁以上就能来，未成年人需要家长陪同办理。"),
    _intent("children",
            "可以带孩子来吗？/小孩能进吗？/带小朋友方便吗？/孩子要买票吗？/儿童怎么收费？/小孩要另外收钱吗？/"
            "孩子能一起进去吗？/请问能带宝宝吗？/带娃去可以吗？/儿童有没有优惠？/孩子需要大人陪着吗？",
            "可以带孩子，{child_age}岁以下免费，需要大人全程陪同。",
            "欢迎带小朋友来，身高{child_height}米以下不收费。",
            "孩子可以来，{child_age}岁以下不收钱，请看好小朋友注意安全。"),
    _intent("wifi",
            "有无线网吗？/WiFi密码是多少？/能连网吗？/有wifi吗？/请问无线网密码多少？/网络名叫什么？/手机能上网吗？/"
            "可以蹭个网吗？/WiFi怎么连？/你们{noun}里有网吗？",
            "有的，WiFi名是{shop}，密码{wifi_pw}。",
            "可以连免费WiFi，名称是{shop}，密码是{wifi_pw}。",
            "有免费无线网，密码{wifi_pw}，前台也贴着。"),
    _intent("toilet",
            "洗手间在哪？/有厕所吗？/卫生间在几楼？/厕所怎么走？/请问哪里有洗手间？/可以借用一下卫生间吗？/"
            "你们{noun}里有厕所吗？/上厕所要出去吗？/附近有公共厕所吗？/我想上个洗手间",
            "洗手间在{toilet_place}，随时可以用。",
            "有的，在{toilet_place}，顺着指示牌走就到。",
            "卫生间在{toilet_place}，需要的话可以找工作人员带您去。"),
    _intent("changing",
            "能洗澡吗？/有更衣室吗？/有没有淋浴？/换衣服在哪换？/有储物柜吗？/洗澡要收钱吗？/有吹风机吗？/"
            "洗澡有热水吗？/柜子要自己带锁吗？/淋浴间在哪里？/运动完能冲个澡吗？",
            "有男女更衣室和淋浴间，热水免费，一直供应到{close}。",
            "更衣室在{locker_place}，储物柜免费，淋浴有热水，吹风机也有。",
            "可以洗澡，淋浴免费，储物柜要自带锁或者找前台借。"),
    _intent("fix",
            "东西有问题怎么办？/做得不满意能重做吗？/买回去发现坏了咋办？/你们弄错了怎么处理？/服务出问题找谁？/"
            "给我弄坏了怎么赔？/结果不满意能返工吗？/请问出了问题怎么解决？/跟说好的不一样怎么办？/质量有问题能换吗？/"
            "出了差错你们负责吗？",
            "请在{fix_days}天内带上凭证来店里，核实后免费重做或退换。",
            "非常抱歉，请拍照联系{phone}，确认是我们的问题会全额负责。",
            "{fix_days}天内发现问题都可以找我们，免费处理，不满意可以退款。"),
    _intent("group",
            "人多能便宜吗？/团体怎么收费？/公司想团购可以吗？/一次买很多有优惠吗？/我们二十个人能一起来吗？/"
            "批量订购怎么算？/团体要提前预约吗？/请问有团购价吗？/单位组织活动能接待吗？/大批量能打折吗？/人多的话怎么安排？",
            "{group_n}人以上可以享受团体价，打{group_disc}折，请提前{book_ahead}天联系。",
            "团购和批量订购都可以，{group_n}人或{group_n}份以上打{group_disc}折。",
            "可以的，团体请提前打{phone}预约，{group_n}人以上有优惠。"),
    _intent("gift_card",
            "有礼品卡吗？/能买卡送人吗？/有没有代金券？/礼品卡怎么买？/想送朋友有什么卡吗？/礼品卡有哪些面额？/"
            "请问可以买电子礼品卡吗？/礼品卡能找零吗？/送人的卡有期限吗？/买张卡送长辈行不行？",
            "有礼品卡，面额有{gift_vals}元，前台和小程序都能买。",
            "可以买礼品卡送人，面额{gift_vals}元，有效期{valid}。",
            "有电子卡和实体卡两种，面额{gift_vals}元可选，不能找零。"),
    _intent("keep",
            "能放几天？/{item}能放多久？/保质期多长？/买回去能存几天？/放冰箱能放多久？/当天吃不完怎么办？/"
            "明天吃还新鲜吗？/常温下能放多久？/需要放冰箱吗？/{item}保鲜期是多久？/放久了会不会坏？",
            "常温下能放{keep_days}天，放冰箱可以多放一两天，建议尽早吃完。",
            "{item}建议{keep_days}天内吃完，吃不完要密封放冰箱。",
            "最好当天吃，冷藏保存不要超过{keep_days}天，不然口感会变差。"),
    _intent("own",
            "能自带{own}吗？/可以带{own}进去吗？/自己带{own}行不行？/{own}能自带吗？/自带{own}收费吗？/"
            "请问可以自己带{own}吗？/带{own}来要加钱吗？/自带东西可以吗？/外面买的{own}能带进来吗？/让带{own}吗？",
            "y|可以自带{own}，我们不额外收取费用。",
            "y|没问题，{own}可以自己带，我们这里也有卖。",
            "f|可以带{own}，不过要收{own_fee}元服务费。",
            "n|不好意思，{noun}里不能自带{own}，有需要可以在我们这里买。"),
)
INTENT_BY_KEY = {intent.key: intent for intent in INTENTS}

# facts drawn once per conversation; numbers are written as strings
_POOLS: dict[str, tuple[str, ...]] = {k: _split(v) for k, v in {
    "closed_days": "除夕和初一/除夕到初三/初一到初三/除夕到初五/除夕当天",
    "district": "城东区/城西区/高新区/滨江区/南湖区/老城区/开发区",
    "road": "中山路/人民路/解放路/建设路/和平路/长江路/学院路/延安路/黄河路/文化路/新华路/光明街",
    "landmark": "万达广场对面/人民公园东门旁边/工商银行隔壁/中心医院斜对面/新华书店楼上/第一小学正对面/"
                "体育馆南门旁边/大润发超市二楼",
    "station": "市民中心/人民广场/文化宫/滨江公园/体育中心/大学城/南湖公园/新街口/和平门",
    "exit": "A/B/C/D", "walk": "3/5/8/10/12", "park_free": "1/2/3", "park_fee": "5/6/8/10",
    "park_place": "楼下停车场/地下车库/门口的停车位/大楼地下二层/旁边的公共停车场",
    "pay": "微信、支付宝、银行卡和现金/微信、支付宝和现金/微信、支付宝、云闪付和银行卡/扫码、刷卡和现金",
    "promo_day": "周一/周二/周三/周四", "discount": "8/8.5/8.8/9/9.5", "stu": "8/8.5/9", "senior": "7/8/8.5/9",
    "senior_age": "60/65/70", "card_disc": "8.5/8.8/9/9.5", "card_price": "100/200/300/500/1000",
    "card_fee": "10/20/30", "transfer_fee": "50/100/200", "freeze_days": "30/60/90", "freeze_times": "1/2/3",
    "valid": "一年/两年/三年/十八个月", "gift_vals": "100、200和500/200、500和1000/50、100和200",
    "busy": "周末下午/工作日晚上/周六上午/中午饭点/下班后那段时间", "wait": "10/15/20/30/40",
    "deliver_km": "3/5/8/10", "deliver_fee": "3/5/6/8", "deliver_free": "49/59/68/88/99", "deliver_min": "30/40/45/60",
    "home_fee": "20/30/50", "home_ahead": "1/2", "book_ahead": "1/2/3", "refund_days": "3/5/7", "refund_fee": "5/10",
    "cancel_hours": "2/6/12/24", "cancel_fee": "10/20/30/50", "resched_hours": "2/4/12/24", "resched_times": "1/2",
    "invoice_days": "7/15/30", "complaint_hours": "12/24/48", "late_min": "10/15/20/30", "trial_n": "一/两",
    "child_age": "3/5/6", "child_height": "1.1/1.2/1.3", "own_fee": "20/30/50/100", "fix_days": "3/7/15",
    "group_n": "5/10/15/20", "group_disc": "8/8.5/9", "keep_days": "1/2/3",
    "toilet_place": "一楼大厅左手边/二楼楼梯口/前台右边走廊尽头/进门直走到底/电梯旁边",
    "locker_place": "前台左手边/二楼/负一楼/进门右转",
}.items()}
_AREA_CODES = ("010", "021", "020", "0571", "0755", "025", "027", "028", "0512", "0532")


@dataclass(frozen=True)
class Sheet:
    business: Business
    facts: dict[str, str]  # slot -> value, for questions and answers alike
    answers: dict[str, str]  # intent key -> this conversation's answer
    keys: tuple[str, ...]  # applicable intents, in INTENTS order


def _price(rng: random.Random, low: int, high: int) -> int:
    if high < 100:
        return rng.randint(low, high)
    return rng.randint(max(low // 10, 1), high // 10) * 10 - (rng.choice((0, 0, 2)) if high < 1000 else 0)  # 200 or 198


def _draw_facts(rng: random.Random, biz: Business) -> dict[str, str]:
    facts = {key: rng.choice(pool) for key, pool in _POOLS.items()}
    item, low, high, unit = rng.choice(biz.items)
    threshold = rng.choice((100, 150, 200, 300))
    facts |= {
        "shop": rng.choice(biz.names), "noun": biz.noun, "card": biz.card, "docs": biz.docs, "own": biz.own,
        "billing": rng.choice(biz.billing), "item": item, "price": str(_price(rng, low, high)), "unit": unit,
        "open": rng.choice(biz.opens), "close": rng.choice(biz.closes),
        "h_open": rng.choice(biz.opens), "h_close": rng.choice(biz.closes),
        "min_age": str(biz.ages[0]), "max_age": str(biz.ages[1]),
        "phone": f"{rng.choice(_AREA_CODES)}-{rng.choice('5678')}{rng.randrange(10**6, 10**7)}",
        "num": str(rng.randint(1, 399)), "line": str(rng.randint(1, 10)),
        "bus": "{}路和{}路".format(*sorted(rng.sample(range(1, 200), 2))),
        "wifi_pw": str(rng.randrange(10**7, 10**8)),
        "threshold": str(threshold), "minus": str(rng.choice((10, 15, 20)) * threshold // 100),
    }
    return facts


def _answer_templates(intent: Intent, biz: Business) -> tuple[str, ...]:
    """The intent's answer templates that fit `biz` ("own": only the rules the business allows)."""
    if intent.key != "own":
        return intent.answers
    return tuple(t[2:] for t in intent.answers if t[0] in biz.own_rules)


def _sheet(rng: random.Random) -> Sheet:
    biz = rng.choice(BUSINESSES)
    facts = _draw_facts(rng, biz)
    keys = tuple(i.key for i in INTENTS if i.key in biz.intents)
    answers = {key: rng.choice(_answer_templates(INTENT_BY_KEY[key], biz)).format_map(facts) for key in keys}
    return Sheet(biz, facts, answers, keys)


def _ask(key: str, index: int, facts: dict[str, str]) -> str:
    return INTENT_BY_KEY[key].phrasings[index].format_map(facts)


def service_conversations(rng: random.Random, count: int) -> list[list[Round]]:
    """`count` conversations of 1-4 rounds, each about one business with one fact sheet."""
    out = []
    for _ in range(count):
        sheet = _sheet(rng)
        keys = rng.sample(sheet.keys, min(rng.randint(1, 4), len(sheet.keys)))
        out.append([(_ask(k, rng.randrange(len(INTENT_BY_KEY[k].phrasings)), sheet.facts), sheet.answers[k])
                    for k in keys])
    return out


def service_recall(rng: random.Random, count: int, max_rounds: int = 8) -> list[list[Round]]:
    """Conversations of 2..max_rounds distinct intents, then one of them asked again in another
    wording; the last answer is exactly the one given earlier in the conversation."""
    if max_rounds < 2:
        raise ValueError("max_rounds must be at least 2")
    out = []
    for _ in range(count):
        sheet = _sheet(rng)
        keys = rng.sample(sheet.keys, min(rng.randint(2, max_rounds), len(sheet.keys)))
        asked = {k: rng.randrange(len(INTENT_BY_KEY[k].phrasings)) for k in keys}
        rounds = [(_ask(k, asked[k], sheet.facts), sheet.answers[k]) for k in keys]
        again = rng.choice(keys)
        first = _ask(again, asked[again], sheet.facts)
        others = [i for i in range(len(INTENT_BY_KEY[again].phrasings))
                  if i != asked[again] and _ask(again, i, sheet.facts) != first]
        rounds.append((_ask(again, rng.choice(others), sheet.facts), sheet.answers[again]))
        out.append(rounds)
    return out


def _check() -> None:
    slot = re.compile(r"[{}]")
    keys = {i.key for i in INTENTS}
    assert len(keys) == len(INTENTS), "duplicate intent key"
    seen: dict[str, str] = {}
    for intent in INTENTS:
        assert len(intent.phrasings) >= 8, f"{intent.key}: only {len(intent.phrasings)} phrasings"
        assert len(set(intent.phrasings)) == len(intent.phrasings), f"{intent.key}: duplicate phrasing"
        assert 2 <= len(intent.answers) <= 4, f"{intent.key}: {len(intent.answers)} answers"
        for p in intent.phrasings:
            norm = p.rstrip("？?。!！")
            assert norm not in seen, f"{p!r} in both {seen[norm]} and {intent.key}"
            seen[norm] = intent.key
    for biz in BUSINESSES:
        assert biz.intents <= keys, f"{biz.kind}: unknown intents {biz.intents - keys}"
        assert ("own" in biz.intents) == bool(biz.own), f"{biz.kind}: own intent without own (or back)"
        assert len(biz.intents) >= 10, f"{biz.kind}: only {len(biz.intents)} intents"
    # the shop support intents hold out dev phrasings; none may leak into the corpus through here
    from support_intents import INTENTS as SUPPORT  # scripts/ is on the path: this file runs as a script

    held_out = {p.rstrip("？?。!！") for i in SUPPORT for p in i.dev}
    assert not held_out & set(seen), f"held-out support phrasings reused: {held_out & set(seen)}"
    # every phrasing and every answer of every applicable intent, for every business, fills all slots
    rng = random.Random(0)
    lengths = []
    for biz in BUSINESSES:
        for _ in range(20):
            facts = _draw_facts(rng, biz)
            for key in biz.intents:
                intent = INTENT_BY_KEY[key]
                templates = _answer_templates(intent, biz)
                for text in (*intent.phrasings, *templates):
                    filled = text.format_map(facts)
                    assert not slot.search(filled), f"{biz.kind}/{key}: {filled}"
                lengths += [len(t.format_map(facts)) for t in templates]
    convs = service_conversations(random.Random(1), 500)
    recall = service_recall(random.Random(2), 500)
    for conv in (*convs, *recall):
        assert all(not slot.search(q + a) for q, a in conv)
    for conv in recall:
        last_q, last_a = conv[-1]
        earlier = [(q, a) for q, a in conv[:-1] if a == last_a]
        assert earlier and all(q != last_q for q, _ in earlier), conv
        assert 3 <= len(conv) <= 9
    assert service_recall(random.Random(5), 3) == service_recall(random.Random(5), 3), "not deterministic"
    sample = {"item": "月卡", "card": "会员卡", "noun": "店", "own": "酒水", "shop": "阳光健身"}
    phrasings = [p.format_map(sample) for intent in INTENTS for p in intent.phrasings]
    plens = sorted(len(p) for p in phrasings)
    print(f"businesses {len(BUSINESSES)}, intents {len(INTENTS)}, phrasings {len(phrasings)}")
    print(f"intents per business {min(len(b.intents) for b in BUSINESSES)}-{max(len(b.intents) for b in BUSINESSES)}")
    print(f"question length {plens[0]}-{plens[-1]}, {sum(5 <= n <= 16 for n in plens) / len(plens):.0%} within 5-16")
    print(f"answer length {min(lengths)}-{max(lengths)}, {sum(15 <= n <= 45 for n in lengths) / len(lengths):.0%} within 15-45")
    for title, sample in (("service_conversations", convs[:5]), ("service_recall", recall[:5])):
        print(f"\n== {title}")
        for conv in sample:
            for q, a in conv:
                print(f"  问：{q}\n  答：{a}")
            print("  --")


if __name__ == "__main__":
    _check()
