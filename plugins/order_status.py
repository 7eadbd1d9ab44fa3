"""Answers "订单 12345 到哪了" from a local SQLite table before the model is asked (before_generate).

A tool in its simplest form: order questions of the support domain (or unrouted ones) are
answered from `orders(order_id, status, courier, updated)`; everything else goes to the model.
Settings: `[plugins.options.order_status] db = "plugins/orders.db"`, `domains = ["support"]`.
A missing database is created with a few sample orders, so the demo works out of the box.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from glmbot.hookspecs import hookimpl
from glmbot.plugins import current_settings, plugin_options

ORDER_QUESTION = re.compile(r"订单\s*(?:号)?\s*[:：]?\s*(\d{5,12}).*?(到哪|哪里|物流|状态|进度|发货|在哪|到了吗)")
SAMPLE_ORDERS = [
    ("12345", "运输中，已到达上海转运中心", "顺丰", "2026-11-27 18:20"),
    ("20231", "已签收", "顺丰", "2026-11-25 10:02"),
    ("88888", "待发货，仓库正在打包", "顺丰", "2026-11-28 09:15"),
]


def database() -> Path:
    options = plugin_options("order_status")
    path = current_settings().path(options.get("db", "plugins/orders.db"))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                       "courier TEXT NOT NULL, updated TEXT NOT NULL)")
            db.executemany("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?)", SAMPLE_ORDERS)
    return path


def lookup(order_id: str) -> str:
    with sqlite3.connect(database()) as db:
        row = db.execute("SELECT status, courier, updated FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return f"没有查到订单 {order_id}，请核对订单号，或输入“转人工”联系客服。"
    status, courier, updated = row
    return f"订单 {order_id}：{status}（{courier}），最后更新于 {updated}。"


@hookimpl
def before_generate(request):
    route = request.route
    domains = plugin_options("order_status").get("domains", ["support"])
    if route is not None and route.domain is not None and route.domain not in domains:
        return None
    text = request.query if request.query is not None else (request.messages[-1]["content"] if request.messages else "")
    match = ORDER_QUESTION.search(text or "")
    return lookup(match.group(1)) if match else None
