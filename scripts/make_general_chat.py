"""Write glmbot/data/general_chat.txt: messages of general chat, the router's picture of what is *not* a
domain's question (glmbot/serving/router.py, the second look at a message no domain's words match).

    python scripts/make_general_chat.py

Two parts, both the project's own text: every user turn of the tiny base's small talk
(scripts/small_talk.py: greetings, thanks, facts, advice, a few capitals and sums), and the list below,
written by hand on 2026-12-06 for this purpose (creative requests, translation, knowledge, cooking,
health, study, travel, feelings). Nothing here asks a particular business about itself; held-out
routing data (bench/routing/, glmbot/data/samples/routing_heldout.jsonl) is checked not to be in it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
import small_talk  # noqa: E402
from glmbot.fileio import atomic_write_text  # noqa: E402

OUT = ROOT / "glmbot" / "data" / "general_chat.txt"

HAND_WRITTEN = (
    "帮我写一首关于秋天的小诗",
    "写一段描写大海的话",
    "给我编一个小猫冒险的故事",
    "帮我想一句母亲节的祝福语",
    "帮我写一段新年贺词",
    "给朋友的结婚祝福怎么写",
    "写一首五言绝句",
    "帮我起个好听的网名",
    "给我的小狗起个名字",
    "用“希望”造个句",
    "这句话用英语怎么说：我很想你",
    "把“早上好”翻译成日语",
    "“谢谢”用法语怎么说",
    "apple是什么意思",
    "帮我把这句话翻译成英文：今天很开心",
    "床前明月光的下一句是什么",
    "静夜思是谁写的",
    "李白是哪个朝代的诗人",
    "唐朝是哪一年建立的",
    "秦始皇统一了几个国家",
    "长城有多长",
    "四大发明是哪四个",
    "红楼梦的作者是谁",
    "西游记里有几个徒弟",
    "孙悟空的师父是谁",
    "三国演义讲的是什么",
    "为什么天空是蓝色的",
    "彩虹是怎么形成的",
    "为什么会打雷",
    "地震是怎么发生的",
    "月亮为什么有圆有缺",
    "人为什么要睡觉",
    "为什么会做梦",
    "光的速度有多快",
    "太阳系有几大行星",
    "离地球最近的星球是哪个",
    "恐龙是怎么灭绝的",
    "鲸鱼是鱼吗",
    "蝙蝠为什么倒挂着睡觉",
    "猫为什么喜欢晒太阳",
    "世界上最大的沙漠在哪里",
    "亚洲有多少个国家",
    "黄河流经哪些省份",
    "珠穆朗玛峰有多高",
    "北极熊生活在哪里",
    "100除以4等于多少",
    "15乘以12是多少",
    "一个三角形的内角和是多少度",
    "圆的面积怎么算",
    "鸡兔同笼问题怎么解",
    "2的10次方是多少",
    "帮我算一下365乘以24",
    "一斤等于多少克",
    "华氏度怎么换算成摄氏度",
    "红烧肉怎么做",
    "饺子馅怎么调才好吃",
    "怎么煮出好吃的米饭",
    "蛋炒饭的做法",
    "可乐鸡翅怎么做",
    "周末想做个蛋糕，需要准备什么",
    "早餐吃什么比较健康",
    "晚饭吃什么不容易长胖",
    "每天喝多少水合适",
    "怎么缓解颈椎疼",
    "久坐对身体有什么危害",
    "头疼的时候怎么办",
    "怎么才能提高免疫力",
    "跑步前要热身吗",
    "每天走一万步有用吗",
    "怎么练出腹肌",
    "失眠了怎么调整作息",
    "午睡睡多久最好",
    "眼睛干涩怎么办",
    "怎么克服拖延症",
    "如何集中注意力",
    "考试前很紧张怎么办",
    "怎么背单词记得牢",
    "读书笔记怎么写",
    "怎么提高写作水平",
    "数学成绩不好怎么提高",
    "孩子不爱看书怎么办",
    "怎么和父母沟通",
    "和朋友吵架了怎么和好",
    "怎么安慰一个难过的朋友",
    "如何拒绝别人又不伤感情",
    "第一次约会穿什么",
    "怎么做一个好的演讲",
    "面试时紧张怎么办",
    "简历怎么写比较好",
    "工作和生活怎么平衡",
    "想换工作该怎么考虑",
    "推荐几本好看的小说",
    "有什么好看的电影推荐",
    "推荐一些适合跑步听的歌",
    "有什么适合全家看的动画片",
    "最近有什么好玩的游戏",
    "去云南旅游有什么建议",
    "第一次出国旅游要准备什么",
    "坐飞机可以带充电宝吗",
    "夏天去哪里避暑好",
    "杭州有哪些好玩的地方",
    "北京有什么特色小吃",
    "怎么规划一次自驾游",
    "旅行箱怎么收拾最省空间",
    "下雨天在家能做什么",
    "怎么养绿萝",
    "多肉植物怎么浇水",
    "衣服上的油渍怎么洗",
    "白鞋发黄怎么办",
    "冰箱有异味怎么去除",
    "怎么挑西瓜",
    "怎么收纳衣柜",
    "电脑和手机哪个辐射大",
    "互联网是怎么工作的",
    "人工智能是什么",
    "什么是区块链",
    "编程应该从哪门语言学起",
    "什么是云计算",
    "给我讲个冷笑话",
    "出个脑筋急转弯",
    "猜个谜语吧",
    "说一个成语故事",
    "你觉得人生的意义是什么",
    "幸福是什么",
    "你相信外星人吗",
    "如果你有超能力想要什么",
    "你最喜欢哪个季节",
    "今天心情不太好",
    "我今天升职了好开心",
    "最近压力好大",
    "好无聊啊，陪我说说话",
    "你觉得我该剪短发吗",
    "周末想宅在家里",
    "我刚跑完五公里",
    "下班了终于可以休息了",
    "明天要考试了",
    "好想去海边",
    "我养了一只小仓鼠",
    "谢谢你陪我聊天",
    "你真有意思",
    "晚安，明天见",
    "早呀，今天也要加油",
    "哈哈哈你太逗了",
    "我不太明白你的意思",
    "能说得简单一点吗",
    "再讲一个吧",
    "换个话题吧",
    "你记得我刚才说了什么吗",
    "你会写代码吗",
    "你能帮我写作文吗",
    "你能陪我练习英语口语吗",
    "你知道今天是什么节日吗",
    "过年为什么要贴春联",
    "元宵节有什么习俗",
    "清明节的由来",
    "情人节送什么礼物好",
    "生日派对怎么布置",
)


def small_talk_turns() -> list[str]:
    turns = [p for group in (small_talk.CHAT_GROUPS, small_talk._FACTS, small_talk._ADVICE) for prompts, _ in group
             for p in prompts]
    turns += [p for p, _ in small_talk.PROBES]
    turns += [f"{country}的首都是哪里？" for country, _ in small_talk._CAPITALS[:8]]
    turns += [f"{province}的省会是哪里？" for province, _ in small_talk._PROVINCES[:8]]
    turns += ["3加5等于几？", "12乘以3等于多少？", "100减37等于多少？", "计算一下56除以7。"]
    return turns


def held_out() -> set[str]:
    """Every message routing is measured on (bench/routing, bench/domains, routing_heldout.jsonl), without its
    end punctuation: none may be in the reference."""
    paths = [*(ROOT / "bench" / "routing").rglob("*.jsonl"), *(ROOT / "bench" / "domains").rglob("*.jsonl"),
             ROOT / "glmbot" / "data" / "samples" / "routing_heldout.jsonl"]
    rows = [json.loads(line) for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {_bare(row.get("text") or row["prompt"]) for row in rows}


def _bare(text: str) -> str:
    return text.strip().rstrip("？?。！!")


def main() -> None:
    skip = held_out()
    candidates = list(dict.fromkeys([*small_talk_turns(), *HAND_WRITTEN]))
    lines = [line for line in candidates if _bare(line) not in skip]
    print(f"{len(candidates) - len(lines)} messages left out: they are in held-out routing data")
    header = ("# General chat (not a domain's question): the router's reference for the plain base model.\n"
              "# Written by scripts/make_general_chat.py; edit that script, not this file.\n")
    atomic_write_text(OUT, header + "\n".join(lines) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(lines)} messages")


if __name__ == "__main__":
    main()
