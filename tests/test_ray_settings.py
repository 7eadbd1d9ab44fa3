"""[ray] settings and what they become (no cluster needed): bad values refused by name, deployment
options per replica, replica stats summed, and `glmbot --help` that never imports Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_helpers import cli, make_project

from glmbot.config import settings_from_dict
from glmbot.errors import ConfigError
from glmbot.integrations.ray_serve.application import portable, replica_options
from glmbot.integrations.ray_serve.remote_engine import combine_stats, multiplex_key
from glmbot.serving.engine import EngineStats
from glmbot.serving.prefix_cache import PrefixCacheStats
from glmbot.serving.router import RouteDecision


def ray_settings(**ray) -> object:
    return settings_from_dict({"ray": ray}, source="glmbot.toml")


@pytest.mark.parametrize("ray, message", [
    ({"replicas": 0}, "[ray] replicas must be >= 1, got 0"),
    ({"num_gpus": 2}, "num_gpus = 2.0 must be 'auto' or in [0, 1]: a replica runs one engine on one GPU"),
    ({"num_gpus": "many"}, "ray.num_gpus has the wrong type: 'many'"),
    ({"address": "http://head:8265"}, "address = 'http://head:8265' is not a Ray address"),
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas = 3 is above max_replicas = 2"),
    ({"max_adapters_per_replica": 0}, "max_adapters_per_replica must be >= 1, got 0"),
    ({"num_cpus": -1}, "num_cpus, memory_gib >= 0"),
    ({"app_name": "my app"}, "app_name = 'my app' must be 1-64 letters"),
    ({"replica": 2}, "unknown key ray.'replica'"),
])
def test_bad_ray_settings_are_refused_naming_the_key(ray, message):
    with pytest.raises(ConfigError) as caught:
        ray_settings(**ray)
    assert message in str(caught.value) and str(caught.value).startswith("glmbot.toml: ")


def test_replica_options_follow_ray_settings():
    fixed = replica_options(ray_settings(replicas=3, num_cpus=2, memory_gib=1.5, max_adapters_per_replica=4), 0)
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0, "memory": 3 << 29}
    assert fixed["max_ongoing_requests"] == 64  # [serving] max_batch_size: one engine batch per replica
    scaled = replica_options(ray_settings(min_replicas=1, max_replicas=8, target_ongoing_requests=16), 8)
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 16.0}
    assert "num_replicas" not in scaled and scaled["ray_actor_options"]["num_gpus"] == 1.0  # auto: GPUs seen


def test_gpus_and_device_must_agree():
    cpu = settings_from_dict({"model": {"device": "cpu"}, "ray": {"num_gpus": 1}}, source="glmbot.toml")
    with pytest.raises(ConfigError, match=r"num_gpus = 1.0 but \[model\] device = 'cpu'"):
        replica_options(cpu, 8)
    cuda = settings_from_dict({"model": {"device": "cuda"}}, source="glmbot.toml")
    with pytest.raises(ConfigError, match="the replicas get no GPU"):
        replica_options(cuda, 0)
    auto_on_cpu_node = settings_from_dict({"model": {"device": "cpu"}}, source="glmbot.toml")
    assert replica_options(auto_on_cpu_node, 8)["ray_actor_options"]["num_gpus"] == 0.0


def test_portable_settings_carry_the_registry_url_and_absolute_paths(tmp_path, monkeypatch):
    settings = settings_from_dict({"registry": {"adapters_dir": "ads"}, "plugins": {"paths": ["plugins"]}},
                                  root=tmp_path)
    monkeypatch.setenv("GLMBOT_DB_URL", "postgresql+psycopg://db/glmbot")
    moved = portable(settings)
    monkeypatch.delenv("GLMBOT_DB_URL")  # a replica on another node has no such variable
    assert moved.db_url == "postgresql+psycopg://db/glmbot"
    assert moved.adapters_dir == tmp_path / "ads" and moved.plugins.paths == [str(tmp_path / "plugins")]


def test_multiplex_key_is_the_pinned_ref_else_the_domain():
    assert multiplex_key(RouteDecision("support", None, "keyword", 1.0)) == "support"
    assert multiplex_key(RouteDecision("support", "support@v2", "explicit", 1.0)) == "support@v2"
    assert multiplex_key(RouteDecision(None, None, "fallback", 0.0)) == ""


def stats(steps: int, step_ms: float, peak: int, finished: dict, hits: int) -> EngineStats:
    cache = PrefixCacheStats(hits=hits, misses=1, evictions=0, bytes=100, entries=1, capacity_bytes=1000, pinned=0)
    return EngineStats(active_rows=1, queued=2, decode_steps=steps, decode_tokens=steps * 2,
                       mean_decode_step_ms=step_ms, peak_rows=peak, prefill_forwards=1, prefill_tokens=10,
                       prefill_s=0.5, mixed_steps=3, idle_s=1.5, finished=finished, slot_bytes=1 << 20,
                       prefix_cache=cache, handoff_taken=steps // 10, handoff_missed=4, handoff_s=0.25)


def test_replica_stats_are_summed():
    total = combine_stats([stats(10, 2.0, 3, {"stop": 2}, 5), stats(30, 4.0, 7, {"stop": 1, "length": 4}, 1)])
    assert (total.active_rows, total.queued, total.decode_steps, total.decode_tokens) == (2, 4, 40, 80)
    assert total.mean_decode_step_ms == pytest.approx((10 * 2.0 + 30 * 4.0) / 40)
    assert total.idle_s == 3.0 and total.mixed_steps == 6 and total.peak_rows == 7 and total.finished == {"stop": 3, "length": 4} and total.slot_bytes == 2 << 20
    assert (total.handoff_taken, total.handoff_missed, total.handoff_s) == (4, 8, 0.5)
    assert (total.prefix_cache.hits, total.prefix_cache.entries, total.prefix_cache.capacity_bytes) == (6, 2, 2000)
    empty = combine_stats([])
    assert (empty.decode_steps, empty.mean_decode_step_ms, empty.prefix_cache) == (0, 0.0, None)


def test_glmbot_help_does_not_import_ray():
    code = "import sys, glmbot.cli.main as m; m.app(['serve', '--help'], standalone_mode=False); " \
           "print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--ray" in done.stdout and done.stdout.strip().endswith("False")


def test_serve_ray_refuses_contradicting_gpus_before_starting_ray(tmp_path, capsys):
    config = make_project(tmp_path, train="[model]\ndevice = \"cpu\"\n[ray]\nnum_gpus = 1")
    code, _, err = cli(config, "serve", "--ray", capsys=capsys)
    assert code == 1
    assert "[ray] num_gpus = 1.0 but [model] device = 'cpu': set num_gpus = 0" in err and "\n" not in err.strip()
    assert not ray_started()


def test_serve_ray_refuses_a_public_address_without_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GLMBOT_API_KEYS", raising=False)
    code, _, err = cli(make_project(tmp_path), "serve", "--ray", "--host", "0.0.0.0", capsys=capsys)
    assert code == 1 and "refusing to serve on '0.0.0.0' without API keys" in err
    assert not ray_started()


def ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def test_an_adapter_dropped_by_rays_lru_leaves_the_prefix_cache(tmp_path, sp_model_file):
    from conftest import small_model
    from test_engine_registry import add_adapter

    from glmbot.integrations.ray_serve.replica import AdapterLease
    from glmbot.model.tokenizer import ChatGLMTokenizer
    from glmbot.registry import Registry
    from glmbot.serving.engine import Engine

    with Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "adapters") as registry:
        add_adapter(registry, "support", 4, 0)
        add_adapter(registry, "support", 6, 1)  # support@v2 active
        add_adapter(registry, "ads", 5, 2)
        tok = ChatGLMTokenizer(sp_model_file)
        with Engine(small_model(), tok, registry=registry, max_batch_size=2, max_len=64) as engine:
            cache, held = engine.prefix_cache, set()
            leases = [AdapterLease(key, engine, held) for key in ("support", "support@v1", "ads")]
            for key in held:
                cache.get(cache.resolve(key))
            assert cache.stats().entries == 3 and held == {"support", "support@v1", "ads"}
            leases[1].__del__()  # a pinned REF: only that version goes
            assert cache.stats().entries == 2 and held == {"support", "ads"}
            leases[0].__del__()
            leases[0].__del__()  # Ray calls it, then Python may: the second does nothing
            assert cache.stats().entries == 1 and held == {"ads"}
            misses = cache.stats().misses
            cache.get(cache.resolve("ads"))  # still cached
            assert cache.stats().misses == misses
            cache.get(cache.resolve("support"))  # loaded again
            assert cache.stats().misses == misses + 1
