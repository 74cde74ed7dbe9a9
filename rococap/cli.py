"""The `rococap` command line. Every option has a ROCOCAP_* environment variable; --help shows both."""

from __future__ import annotations

import functools
import logging
import os
import sys

import click

from rococap import __version__
from rococap.errors import RococapError
from rococap.settings import (
    ATTENTIONS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_EVERY_ROWS,
    DEFAULT_DATASET,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MIN_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    DEFAULT_RETRY_BASE_DELAY_S,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    DEVICES,
    DTYPES,
    CaptionSettings,
    OutputSettings,
    RuntimeSettings,
    Settings,
    validate_run_name,
)

ENV_PREFIX = "ROCOCAP_"
POSITIVE_INT = click.IntRange(min=1)


def option(*names: str, env: str, **kwargs):
    """A click option with its environment variable and default shown in --help."""
    return click.option(*names, envvar=ENV_PREFIX + env, show_envvar=True, show_default=True, **kwargs)


def compose(*decorators):
    def apply(function):
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


dataset_option = option(
    "--dataset",
    env="DATASET",
    default=DEFAULT_DATASET,
    help="Hugging Face dataset id, or a local folder holding data/<split>-*.parquet.",
)
selection_options = compose(
    option(
        "--limit",
        env="LIMIT",
        type=POSITIVE_INT,
        default=None,
        help="Caption only the first N images of the split (split order).",
    ),
    option(
        "--ids",
        "ids_file",
        env="IDS",
        type=click.Path(dir_okay=False),
        default=None,
        help="File with one image id per line to caption instead of the whole split.",
    ),
)
caption_options = compose(
    option("--model", env="MODEL", default=DEFAULT_MODEL, help="Qwen2-VL model id or local folder."),
    option("--prompt", env="PROMPT", default=DEFAULT_PROMPT, help="Instruction given with every image."),
    option(
        "--max-new-tokens",
        env="MAX_NEW_TOKENS",
        type=POSITIVE_INT,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="Longest caption, in tokens (greedy decoding).",
    ),
    option(
        "--min-pixels",
        env="MIN_PIXELS",
        type=POSITIVE_INT,
        default=DEFAULT_MIN_PIXELS,
        help="Smallest image area after resizing, in pixels.",
    ),
    option(
        "--max-pixels",
        env="MAX_PIXELS",
        type=POSITIVE_INT,
        default=DEFAULT_MAX_PIXELS,
        help="Largest image area after resizing, in pixels: the main speed knob.",
    ),
)
dtype_option = option(
    "--dtype",
    env="DTYPE",
    type=click.Choice(DTYPES),
    default="auto",
    help="Model precision: auto is float16 on CUDA and float32 on CPU.",
)
attention_option = option(
    "--attention",
    env="ATTENTION",
    type=click.Choice(ATTENTIONS),
    default="sdpa",
    help="Attention kernel: sdpa (PyTorch), eager, or flash_attention_2 (needs flash-attn).",
)
runtime_options = compose(
    option(
        "--device",
        env="DEVICE",
        type=click.Choice(DEVICES),
        default="auto",
        help="Where the model runs: auto picks CUDA when a GPU is visible.",
    ),
    dtype_option,
    option(
        "--batch-size",
        env="BATCH_SIZE",
        type=POSITIVE_INT,
        default=DEFAULT_BATCH_SIZE,
        help="Images per generate call.",
    ),
    attention_option,
    option(
        "--sort-by-size/--no-sort-by-size",
        env="SORT_BY_SIZE",
        default=True,
        help="Batch images of similar size together (less padding); output order then differs within "
        "windows of 8 batches.",
    ),
)
output_options = compose(
    option(
        "--out",
        "out_dir",
        env="OUT",
        type=click.Path(file_okay=False),
        default="results",
        help="Folder that holds one sub-folder per run.",
    ),
    option(
        "--run",
        "run_name",
        env="RUN",
        default=None,
        help="Run name, the sub-folder of --out  [default: the split name]",
    ),
    option(
        "--checkpoint-every",
        env="CHECKPOINT_EVERY",
        type=POSITIVE_INT,
        default=DEFAULT_CHECKPOINT_EVERY_ROWS,
        help="Rows between fsynced checkpoints of the CSV and run.json.",
    ),
)


def caption_settings_from(params: dict) -> CaptionSettings:
    return CaptionSettings(
        model=params["model"],
        prompt=params["prompt"],
        max_new_tokens=params["max_new_tokens"],
        min_pixels=params["min_pixels"],
        max_pixels=params["max_pixels"],
    )


def runtime_settings_from(params: dict) -> RuntimeSettings:
    return RuntimeSettings(
        device=params["device"],
        dtype=params["dtype"],
        batch_size=params["batch_size"],
        attention=params["attention"],
        sort_by_size=params["sort_by_size"],
    )


def user_errors(function):
    """Turn RococapError into click's one-line `Error: ...` and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RococapError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def quiet_libraries(level: int) -> None:
    """Keep library progress bars and warnings out of the way unless debugging."""
    if level <= logging.DEBUG:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rococap")
@option(
    "--log-level",
    env="LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default="WARNING",
    help="Logging detail on stderr.",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """Caption ROCOv2 radiology images with Qwen2-VL, on one machine or many GPUs.

    Locally: `rococap run SPLIT`. Distributed: `rococap worker` on each GPU host, `rococap collect`
    next to the results folder, then `rococap enqueue SPLIT` and `rococap status --watch`.
    """
    ctx.obj = {"log_level": log_level}
    level = getattr(logging, log_level)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    quiet_libraries(level)


@cli.command("run")
@click.argument("split")
@dataset_option
@selection_options
@caption_options
@runtime_options
@output_options
@option(
    "--retry-failed",
    env="RETRY_FAILED",
    is_flag=True,
    default=False,
    help="Caption again the ids listed in the run's failed file.",
)
@option(
    "--progress/--no-progress",
    env="PROGRESS",
    default=None,
    help="Show a progress bar  [default: when stderr is a terminal]",
)
@user_errors
def run_command(
    split, dataset, limit, ids_file, out_dir, run_name, checkpoint_every, retry_failed, progress, **params
) -> None:
    """Caption a split locally (no Redis) into OUT/RUN/medical_captions_SPLIT.csv.

    Rerunning the same command resumes: ids already in the CSV or the failed file are skipped.
    """
    from rococap.dataset import read_ids_file
    from rococap.local import run_local

    settings = Settings(
        dataset=dataset,
        split=split,
        caption=caption_settings_from(params),
        runtime=runtime_settings_from(params),
        output=OutputSettings(out_dir=out_dir, run=run_name or split, checkpoint_every=checkpoint_every),
    )
    ids = read_ids_file(ids_file) if ids_file else None
    summary = run_local(settings, limit=limit, ids=ids, retry_failed=retry_failed, show_progress=progress)
    for line in summary.lines():
        click.echo(line)


redis_option = option(
    "--redis-url",
    env="REDIS_URL",
    default="redis://localhost:6379/0",
    help="Redis broker URL; a password goes in the URL: redis://:PASSWORD@host:6379/0.",
)


@cli.command("enqueue")
@click.argument("split")
@dataset_option
@selection_options
@caption_options
@redis_option
@option("--run", "run_name", env="RUN", default=None, help="Run name  [default: the split name]")
@option(
    "--chunk-size",
    env="CHUNK_SIZE",
    type=POSITIVE_INT,
    default=DEFAULT_BATCH_SIZE,
    help="Image ids per task: one GPU batch.",
)
@option(
    "--out",
    "out_dir",
    env="OUT",
    type=click.Path(file_okay=False),
    default="results",
    help="Results folder; ids already in this run's files (if readable here) are not sent again.",
)
@option(
    "--resend-pending",
    env="RESEND_PENDING",
    is_flag=True,
    default=False,
    help="Send again ids that were enqueued but have no result yet (after losing the queue).",
)
@user_errors
def enqueue_command(
    split, dataset, limit, ids_file, redis_url, run_name, chunk_size, out_dir, resend_pending, **params
) -> None:
    """Register a run in Redis and enqueue the image ids of SPLIT that are not done yet."""
    from rococap.dataset import read_ids_file
    from rococap.producer.enqueue import EnqueueSettings, enqueue
    from rococap.runs import redact_url

    settings = EnqueueSettings(
        redis_url=redis_url,
        dataset=dataset,
        split=split,
        run=validate_run_name(run_name or split),
        caption=caption_settings_from(params),
        chunk_size=chunk_size,
        out_dir=out_dir,
        resend_pending=resend_pending,
    )
    ids = read_ids_file(ids_file) if ids_file else None
    result = enqueue(settings, limit=limit, ids=ids)
    click.echo(
        f"run {result.run}: {result.selected} selected, {result.done_before} already done, "
        f"{result.pending_before} already queued, {result.sent_ids} ids sent as {result.tasks} tasks "
        f"to queue {result.queue} at {redact_url(redis_url)}"
    )
    click.echo(f"watch it:   rococap status --run {result.run} --watch")
    click.echo(f"collect it: rococap collect --run {result.run} --until-done")


@cli.command("worker")
@option(
    "--gpus", env="GPUS", default="all", help="all, cpu, or GPU indices such as 0,1: one process per GPU."
)
@option(
    "--model",
    env="MODEL",
    default=DEFAULT_MODEL,
    help="Model this worker holds; it takes only that model's tasks.",
)
@dtype_option
@option(
    "--batch-size",
    env="BATCH_SIZE",
    type=POSITIVE_INT,
    default=DEFAULT_BATCH_SIZE,
    help="Most images per generate call; larger tasks are split.",
)
@attention_option
@option(
    "--dataset",
    env="WORKER_DATASET",
    default=None,
    help="Where this host finds the dataset  [default: where the run says]",
)
@redis_option
@option(
    "--max-retries",
    env="MAX_RETRIES",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_RETRIES,
    help="Retries of a task after a transient error, with exponential backoff and jitter.",
)
@option(
    "--retry-base-delay-s",
    env="RETRY_BASE_DELAY_S",
    type=click.FloatRange(min=0),
    default=DEFAULT_RETRY_BASE_DELAY_S,
    help="First retry delay in seconds; doubled each retry.",
)
@option(
    "--max-deliveries",
    env="MAX_DELIVERIES",
    type=click.IntRange(min=2),
    default=DEFAULT_MAX_DELIVERIES,
    help="Deliveries of a task that keeps killing its worker before the image it dies on is recorded as failed.",
)
@option(
    "--visibility-timeout-s",
    env="VISIBILITY_TIMEOUT_S",
    type=POSITIVE_INT,
    default=DEFAULT_VISIBILITY_TIMEOUT_S,
    help="Seconds before an unacknowledged task is given to another worker; longer than the longest task.",
)
@option(
    "--name",
    env="WORKER_NAME",
    default=None,
    help="Worker name before @host, to run several CPU workers on one host  [default: gpuN or cpu]",
)
@option(
    "--dry-run",
    env="DRY_RUN",
    is_flag=True,
    default=False,
    help="Print the worker processes this would start, and exit.",
)
@click.pass_context
@user_errors
def worker_command(
    ctx,
    gpus,
    model,
    dtype,
    batch_size,
    attention,
    dataset,
    redis_url,
    max_retries,
    retry_base_delay_s,
    max_deliveries,
    visibility_timeout_s,
    name,
    dry_run,
) -> None:
    """Start Celery workers: one process per GPU (solo pool), each holding one model."""
    from rococap.captioner import check_model_source
    from rococap.runs import connect_redis
    from rococap.worker.launcher import (
        describe,
        parse_gpus,
        plan_workers,
        start_in_process,
        supervise,
        with_device,
    )
    from rococap.worker.tasks import WorkerSettings

    if name is not None:
        validate_run_name(name)  # same rule: letters, digits, '.', '_', '-'
    plans = plan_workers(parse_gpus(gpus), model, name=name)
    if dry_run:
        for line in describe(plans):
            click.echo(line)
        return
    check_model_source(model)
    connect_redis(redis_url).close()
    if len(plans) > 1:
        sys.exit(supervise(plans, sys.argv[1:]))
    plan = plans[0]
    settings = WorkerSettings(
        redis_url=redis_url,
        model=model,
        hostname=plan.hostname,
        dataset=dataset,
        max_retries=max_retries,
        retry_base_delay_s=retry_base_delay_s,
        max_deliveries=max_deliveries,
        visibility_timeout_s=visibility_timeout_s,
        runtime=with_device(RuntimeSettings(dtype=dtype, batch_size=batch_size, attention=attention), plan),
    )
    start_in_process(plan, settings, ctx.obj["log_level"])


@cli.command("collect")
@redis_option
@option("--run", "run_name", env="RUN", default=None, help="Collect only this run  [default: every run]")
@option(
    "--out",
    "out_dir",
    env="OUT",
    type=click.Path(file_okay=False),
    default="results",
    help="Folder that holds one sub-folder per run.",
)
@option(
    "--checkpoint-every",
    env="CHECKPOINT_EVERY",
    type=POSITIVE_INT,
    default=DEFAULT_CHECKPOINT_EVERY_ROWS,
    help="Rows between fsynced checkpoints; entries are acknowledged after each.",
)
@option(
    "--until-done",
    env="UNTIL_DONE",
    is_flag=True,
    default=False,
    help="Exit 0 once every enqueued id of the run(s) is in the CSV or the failed file.",
)
@user_errors
def collect_command(redis_url, run_name, out_dir, checkpoint_every, until_done) -> None:
    """Write results from Redis into OUT/RUN/ (the same files as `rococap run`)."""
    from rococap.collector.collect import Collector, CollectorSettings
    from rococap.runs import connect_redis

    settings = CollectorSettings(
        redis_url=redis_url,
        out_dir=out_dir,
        checkpoint_every=checkpoint_every,
        run=validate_run_name(run_name) if run_name else None,
        until_done=until_done,
    )
    collector = Collector(settings, connect_redis(redis_url))
    try:
        code = collector.serve()
    except KeyboardInterrupt:
        code = 0
    finally:
        collector.close()
    for sink in collector.sinks.values():
        click.echo(
            f"run {sink.spec.run}: {sink.output.captioned_count} captioned, {sink.output.failed_count} "
            f"failed, in {sink.output.folder}"
        )
    sys.exit(code)


@cli.command("status")
@redis_option
@option("--run", "run_name", env="RUN", default=None, help="Show only this run  [default: every run]")
@option(
    "--watch",
    env="WATCH",
    is_flag=True,
    default=False,
    help="Refresh with a progress bar until the runs are done.",
)
@option(
    "--interval-s",
    env="STATUS_INTERVAL_S",
    type=click.FloatRange(min=0.2),
    default=2.0,
    help="Seconds between refreshes with --watch.",
)
@option("--json", "as_json", env="JSON", is_flag=True, default=False, help="Print one JSON object per run.")
@user_errors
def status_command(redis_url, run_name, watch, interval_s, as_json) -> None:
    """Per run: total, done, failed, queued, running, images/s over the last minute, ETA; workers online."""
    import json
    import time

    from rococap.celery_app import make_celery_app
    from rococap.runs import connect_redis
    from rococap.status import all_statuses, format_table, progress_bar, workers_online

    client = connect_redis(redis_url)
    app = make_celery_app(redis_url)
    name = validate_run_name(run_name) if run_name else None
    while True:
        statuses = all_statuses(client, name)
        if name and not statuses:
            raise RococapError(
                f"no run {name!r} in Redis: enqueue it first (rococap enqueue SPLIT --run {name})"
            )
        workers = workers_online(app)
        if as_json:
            for status in statuses:
                click.echo(json.dumps({**status.to_dict(), "workers_online": workers}))
        else:
            if watch:
                click.clear()
            for line in format_table(statuses, workers):
                click.echo(line)
            if watch:
                for status in statuses:
                    click.echo(progress_bar(status))
        if not watch or (statuses and all(s.done >= s.total > 0 for s in statuses)):
            return
        time.sleep(interval_s)


@cli.command("evaluate")
@click.argument("csv_path", metavar="CSV", type=click.Path(exists=True, dir_okay=False))
@option(
    "--references",
    env="REFERENCES",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CSV with image_id,caption to score against  [default: the CSV's original_caption column]",
)
@option(
    "--cuis",
    env="CUIS",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CSV with image_id,cui (';'-separated) for modality agreement  [default: the dataset's cui column]",
)
@option(
    "--cui-map",
    env="CUI_MAP",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CSV of CUI,name; CUIs missing from it are counted in metrics.json.",
)
@option(
    "--dataset",
    env="EVAL_DATASET",
    default=None,
    help="Dataset for thumbnails and CUIs (hub id or folder), split taken from the CSV.",
)
@option(
    "--report",
    "report_dir",
    env="REPORT",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for metrics.json, plots and report.html  [default: report/ beside the CSV]",
)
@option(
    "--bertscore/--no-bertscore",
    env="BERTSCORE",
    default=True,
    help="Try BERTScore (needs bert-score and microsoft/deberta-xlarge-mnli; skipped with a message if absent).",
)
@user_errors
def evaluate_command(csv_path, references, cuis, cui_map, dataset, report_dir, bertscore) -> None:
    """Score a captions CSV against references; write metrics.json, plots and an HTML report."""
    from pathlib import Path

    from rococap.evaluate import evaluate, read_captions_csv, read_cui_names, read_reference_csv, unknown_cuis
    from rococap.report import write_report

    frame = read_captions_csv(csv_path)
    reference_frame = read_reference_csv(references) if references else None
    cui_frame = read_reference_csv(cuis) if cuis else None
    thumbnails: dict[str, bytes] = {}
    if dataset:
        from rococap.dataset import SplitSource

        split = frame["split"].iloc[0] if "split" in frame.columns and len(frame) else "test"
        source = SplitSource.open(dataset, split)
        ids = [image_id for image_id in frame["image_id"] if image_id in source]
        thumbnails = {row.image_id: row.image_bytes for row in source.rows(ids)}
        if cui_frame is None:
            import pandas as pd

            values = [";".join(v) if isinstance(v, list) else (v or "") for v in source.column("cui", ids)]
            cui_frame = pd.DataFrame({"image_id": ids, "cui": values}).set_index("image_id")
    evaluation = evaluate(frame, reference_frame, cui_frame, with_bertscore=bertscore)
    if cui_map and cui_frame is not None:
        used = cui_frame[cui_frame.index.isin(frame["image_id"])]
        evaluation.counts["unknown_cuis"] = unknown_cuis(used, read_cui_names(cui_map))
    folder = Path(report_dir) if report_dir else Path(csv_path).parent / "report"
    page = write_report(evaluation, folder, f"rococap evaluation: {Path(csv_path).name}", thumbnails)
    for name, value in evaluation.aggregate.items():
        click.echo(f"{name:<14} {value:.4f}")
    for reason in evaluation.skipped_metrics.values():
        click.echo(f"note: {reason}")
    if evaluation.modality.get("available"):
        generated = evaluation.modality["generated"]
        click.echo(
            f"modality agreement: generated {generated['accuracy']:.3f}, "
            f"reference {evaluation.modality['reference']['accuracy']:.3f} "
            f"({evaluation.modality['images_with_gold_modality']} images with a modality CUI)"
        )
    click.echo(f"report: {page}")


def main() -> None:
    cli(prog_name="rococap")


if __name__ == "__main__":
    main()
