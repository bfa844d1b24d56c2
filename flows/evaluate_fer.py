"""The evaluate-fer flow: does the expansion help FER training? Same classifier, seed and budget, two training sets."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.fer import (
    RUNS,
    FERConfig,
    describe_data,
    train_and_evaluate,
    write_config,
    write_report,
)
from tasks.fer_study import StudyConfig, parse_training_set, run_study


@task(name="fer-describe-data", cache_policy=NO_CACHE)
def describe_data_task(original: str, expanded: str) -> dict:
    return describe_data(original, expanded)


@task(name="fer-train-and-evaluate", cache_policy=NO_CACHE)
def train_and_evaluate_task(run: str, train_root: str, original: str, config: FERConfig) -> dict:
    return train_and_evaluate(run, train_root, original, config)


@flow(name="evaluate-fer", log_prints=True)
def evaluate_fer(original: str, expanded: str, out: str, config: FERConfig = FERConfig()) -> dict:
    """Train on `original`'s train originals and on `expanded`'s whole train split; score both on
    `original`'s test split; write fer_report.md and fer_report.json into `out`."""
    logger = get_run_logger()

    # 1. Record the resolved config before any training.
    write_config(out, original, expanded, config)

    # 2. Count what each run reads (per stage and label); refuse empty sets and test-split leaks.
    data = describe_data_task(original, expanded)
    logger.info(f"train images: originals {data['originals']['n']}, expanded {data['expanded']['n']}; "
                f"test images {data['test']['n']}")

    # 3. Train and score each run with the same seed and number of steps.
    results = {}
    for run in RUNS:
        results[run] = train_and_evaluate_task(run, original if run == "originals" else expanded, original, config)
        logger.info(f"{run}: accuracy {results[run]['accuracy']:.3f}, mean recall {results[run]['mean_recall']:.3f}")

    # 4. Write the side-by-side report and attach it to the flow run.
    paths = write_report(out, config, data, results, original, expanded)
    _publish_artifact(Path(paths["markdown"]))
    print(f"FER report: {paths['markdown']}")
    return {"data": data, "runs": results, "report": paths}


def _publish_artifact(report_md: Path, key: str = "fer-report") -> None:
    """Attach the report to the flow run in the Prefect UI (best effort: a report never fails a run)."""
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=report_md.read_text(), key=key, description="FER evaluation")
    except Exception as exc:  # pragma: no cover - depends on the Prefect backend
        get_run_logger().warning(f"could not publish the FER report artifact: {exc}")


@task(name="fer-study", cache_policy=NO_CACHE)
def fer_study_task(original: str, sets: list[str], out: str, config: StudyConfig,
                   comparisons: list[tuple[str, str]] | None, workers: int) -> dict:
    logger = get_run_logger()

    def log(result: dict) -> None:
        logger.info(f"fold {result['fold']} seed {result['seed']} {result['set']}: accuracy {result['accuracy']:.3f}, "
                    f"mean recall {result['mean_recall']:.3f} ({result['n_train']} training images)")

    return run_study(original, [parse_training_set(t) for t in sets], config, out, comparisons,
                     on_result=log, workers=workers)


@flow(name="evaluate-fer-study", log_prints=True)
def evaluate_fer_study(original: str, sets: list[str], out: str, config: StudyConfig = StudyConfig(),
                       comparisons: list[tuple[str, str]] | None = None, workers: int = 1) -> dict:
    """Several training sets (`NAME=PART+PART...`, see tasks.fer_study), k folds by person x several seeds,
    scored on held-out originals; writes fer_study.md / fer_study.json and runs/ (resumable) into `out`."""
    # 1. Check the set specs before anything is read or trained.
    parsed = [parse_training_set(t) for t in sets]

    # 2. Train and score every (fold, seed, set); results are saved as they finish, a re-run reuses them.
    result = fer_study_task(original, [f"{s.name}={s.describe()}" for s in parsed], out, config, comparisons, workers)

    # 3. Attach the summary to the flow run.
    _publish_artifact(Path(result["report"]["markdown"]), key="fer-study")
    print(f"FER study: {result['report']['markdown']}")
    return result


__all__ = ["evaluate_fer", "evaluate_fer_study"]
