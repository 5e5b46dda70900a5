"""Flower's own Prometheus metrics, with task events coming from our Celery configuration.

Claims: ``celery -A tasks flower`` serves ``/metrics`` with ``flower_*`` series
while a real worker runs; the worker shows online there, and a task sent by a
client built from tasks.celery shows ``task-sent`` (``task_send_sent_event``)
and ``task-succeeded`` (``worker_send_task_events``) events. Flower runs with
``--enable_events=False`` so that it cannot switch events on itself: the
events it counts come only from the configuration (STACK.md).
"""

from __future__ import annotations

from pathlib import Path

from api_helpers import http
from engine_helpers import CeleryProcess, WorkerProcess, engine_env, wait_until
from prometheus_client.parser import text_string_to_metric_families

from deploy.embedded import free_port
from schema.settings import Settings
from tasks.celery import celery_config, create_app


def flower_samples(base: str) -> list:
    answer = http("GET", f"{base}/metrics", timeout=5)
    assert answer.status == 200, answer
    return [s for family in text_string_to_metric_families(answer.body) for s in family.samples]


def test_celery_config_turns_task_events_on(empty_database_url, redis_url):
    config = celery_config(Settings.from_env(engine_env(empty_database_url, redis_url)))
    assert config["worker_send_task_events"] is True
    assert config["task_send_sent_event"] is True


def test_flower_metrics_answer_while_a_worker_runs(empty_database_url, redis_url, tmp_path: Path):
    env = engine_env(empty_database_url, redis_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = WorkerProcess.create("flowertest", env, tmp_path, queues="refresh,default")
    flower = CeleryProcess("flower", ["flower", "--address=127.0.0.1", f"--port={port}", "--enable_events=False"],
                           env, tmp_path / "flower.log")
    client = create_app(Settings.from_env(env))
    worker.start()
    flower.start()
    try:
        worker.wait_ready(client)

        def flower_up() -> bool:
            assert flower.alive(), flower.log_tail()
            try:
                return http("GET", f"{base}/healthcheck", timeout=2).status == 200
            except OSError:
                return False

        wait_until(flower_up, 30, interval=0.2, what="Flower to answer")

        def worker_online() -> bool:
            return any(s.name == "flower_worker_online" and s.labels["worker"].startswith("flowertest@")
                       and s.value == 1 for s in flower_samples(base))

        # Heartbeats (every 2 s) show the worker to Flower even if its online event came first.
        wait_until(worker_online, 30, interval=0.3, what="Flower to see the worker online")

        result = client.send_task("tasks.refresh_view", args=["mv_feed_projects"])
        assert result.get(timeout=30)["status"] == "completed"

        def counted(event_type: str) -> float:
            return sum(s.value for s in flower_samples(base)
                       if s.name == "flower_events_total" and s.labels["type"] == event_type
                       and s.labels["task"] == "tasks.refresh_view")

        wait_until(lambda: counted("task-succeeded") >= 1, 15, interval=0.3, what="a task-succeeded event")
        assert counted("task-sent") >= 1
        names = {s.name for s in flower_samples(base)}
        assert {"flower_events_total", "flower_worker_online", "flower_task_runtime_seconds_count"} <= names, names
    finally:
        flower.stop()
        worker.stop()
        client.close()
