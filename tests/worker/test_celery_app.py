"""The Celery reliability configuration (acks late, one task in hand, durable queues) and the
task registrations."""

from __future__ import annotations

from core.names import GENERATE, SCORE, TRAIN
from core.queue import create_producer
from core.settings import Settings
from worker.celery_app import WorkerApp


def test_reliability_settings(tmp_path):
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:6379/5",
                        training_time_limit=7200, visibility_timeout=9000)
    conf = create_producer(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_url == conf.result_backend == "redis://127.0.0.1:6379/5"
    assert conf.broker_transport_options["visibility_timeout"] == 9000 > 7200
    assert conf.task_routes[GENERATE]["queue"] == conf.task_routes[SCORE]["queue"] == \
        "inference"
    assert conf.task_routes[TRAIN]["queue"] == "training"
    queues = {q.name: q for q in conf.task_queues}
    assert {q.exchange.name for q in queues.values()} == {"inference", "training"}
    assert queues["training"].routing_key == "training"


def test_embedded_broker_is_durable_sqlite(tmp_path):
    conf = create_producer(Settings(data_dir=tmp_path, redis_url=None)).conf
    assert conf.broker_url == f"sqla+sqlite:///{tmp_path.resolve()}/broker.sqlite"
    assert conf.result_backend == f"db+sqlite:///{tmp_path.resolve()}/results.sqlite"
    assert conf.worker_enable_remote_control is False


def test_api_app_has_no_task_code_and_worker_app_has_the_tasks(tmp_path):
    settings = Settings(data_dir=tmp_path, inference_time_limit=100, training_time_limit=3600)
    api = create_producer(settings)
    assert not [name for name in api.tasks if name.startswith("debm.")]
    worker = WorkerApp(settings)
    tasks = worker.tasks
    route = worker.amqp.router.route
    assert route({}, GENERATE)["queue"].name == route({}, SCORE)["queue"].name == "inference"
    assert route({}, TRAIN)["queue"].name == "training"
    assert tasks[GENERATE].soft_time_limit == 100 and tasks[TRAIN].soft_time_limit == 3600
    assert tasks[TRAIN].acks_late and tasks[TRAIN].reject_on_worker_lost


def test_api_validates_against_what_the_workers_run():
    """The API (torch-free) takes sampler and dataset names from model.formats.config and
    model.formats.archives; the worker runs model.samplers and model.data, which must agree."""
    from typing import get_args

    from model.data import BUILTIN_DATASETS as LOADER_DATASETS
    from model.formats.archives import BUILTIN_DATASETS
    from model.samplers import SAMPLERS
    from service.schemas import GenerateRequest

    accepted = get_args(GenerateRequest.model_fields["sampler"].annotation)
    assert sorted(accepted) == sorted(SAMPLERS)
    assert tuple(LOADER_DATASETS) == tuple(BUILTIN_DATASETS)
