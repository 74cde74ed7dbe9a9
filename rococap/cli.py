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
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_EVERY_ROWS,
    DEFAULT_DATASET,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    DEVICES,
    DTYPES,
    CaptionSettings,
    OutputSettings,
    RuntimeSettings,
    Settings,
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
runtime_options = compose(
    option(
        "--device",
        env="DEVICE",
        type=click.Choice(DEVICES),
        default="auto",
        help="Where the model runs: auto picks CUDA when a GPU is visible.",
    ),
    option(
        "--dtype",
        env="DTYPE",
        type=click.Choice(DTYPES),
        default="auto",
        help="Model precision: auto is float16 on CUDA and float32 on CPU.",
    ),
    option(
        "--batch-size",
        env="BATCH_SIZE",
        type=POSITIVE_INT,
        default=DEFAULT_BATCH_SIZE,
        help="Images per generate call.",
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
    return RuntimeSettings(device=params["device"], dtype=params["dtype"], batch_size=params["batch_size"])


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
def cli(log_level: str) -> None:
    """Caption ROCOv2 radiology images with Qwen2-VL, on one machine or many GPUs."""
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


def main() -> None:
    cli(prog_name="rococap")


if __name__ == "__main__":
    main()
