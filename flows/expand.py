"""The expand flow: prepared dataset -> AU edits (landmark warp or GANimation) -> SinGAN regenerations -> shards +
manifest + report."""
from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from flows._run import (
    StartError,
    current_run_id,
    output_lock,
    publish_report,
    refuse_out_inside,
    require_dir,
    require_file_or_dir,
    settings_hash,
    write_run_config,
)
from manifests.reader import verify
from manifests.schema import EMOTIONS, stable_hash
from manifests.writer import committed_units, merge_rejects, retire_units, write_rejects_part
from models.singan import PRESETS, pyramid_sizes, scale_channels
from tasks.expand import (
    ExpandJob,
    ExpandUnit,
    QualityGate,
    assumed_source_aus,
    ensure_singan_prior,
    expand_unit,
    load_original_rows,
    plan_expand_units,
)
from tasks.report import expand_tiles, label_histogram_png, write_report
from tasks.targets import (
    DEFAULT_INTENSITY_RANGE,
    BalanceConfig,
    Edit,
    EmotionConfig,
    InterpolateConfig,
    Plan,
    SingleAUConfig,
    plan_balance,
    plan_emotion,
    plan_interpolate,
    plan_single_au,
    plan_summary,
)


class PlanSettings(BaseModel):
    """Which AU targets each train source gets (GANimation half)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["none", "single_au", "interpolate", "emotion", "balance"] = "emotion"
    per_source: int | None = Field(3, ge=1, description="N: edits kept per source (a seeded choice); None keeps all")
    single_au: SingleAUConfig = SingleAUConfig()
    interpolate: InterpolateConfig = InterpolateConfig()
    emotion: EmotionConfig = EmotionConfig()
    balance: BalanceConfig = BalanceConfig()


class ExpandSettings(BaseModel):
    """Everything an expand run depends on; validated at the boundary and written before work starts."""

    model_config = ConfigDict(extra="forbid")

    prepared: str = Field(description="output root of `singanimation prepare`")
    out: str = Field(description="output root of the expanded dataset")
    run_name: str = Field("expand", pattern=r"^[A-Za-z0-9_-]+$")
    editor: Literal["warp", "ganimation", "warp+ganimation"] | None = Field(
        None, description="who makes the AU edits: 'warp' (landmark editor, no training), 'ganimation', or "
                          "'warp+ganimation' (the warp, then GANimation from the warped face toward the same target); "
                          "default: ganimation when a checkpoint is given, else warp")
    ganimation: str | None = Field(None, description="GANimation checkpoint dir (editors 'ganimation', 'warp+ganimation')")
    au_shape: str | None = Field(None, description="AU shape model JSON for the warp (fit-au-shape); default: FACS-authored")
    source_aus: Literal["neutral", "label"] = Field(
        "neutral", description="AUs the warp assumes for a source without measured AUs (no OpenFace file): "
                               "'neutral' (all zero) or 'label' (the EMFACS prototype of its emotion label, for "
                               "peak-expression data such as CK+)")
    plan: PlanSettings = PlanSettings()
    regenerations: int = Field(2, ge=0, description="M SinGAN regenerations per edit; 0 = GANimation edits only")
    singan_preset: str = Field("fast", description=f"one of {sorted(PRESETS)}")
    singan_overrides: dict[str, float | int | bool] = Field(
        default_factory=dict, description="SinGANConfig fields to change from the preset, e.g. {'iters_per_scale': 200}")
    singan_start: str = Field("N-1", pattern=r"^N(-[0-9]+)?$", description="scale the image is injected at")
    singan_noise_gain: float = Field(3.0, ge=0, description="noise multiplier at the start scale (1 = as trained)")
    singan_train_on: Literal["source", "edit"] = Field(
        "source", description="one SinGAN per source face with its edits injected at the start scale (N times fewer "
                              "trainings), or one per edit")
    singan_residual: bool = Field(
        True, description="each regeneration = the injected image + the variation the noise draws (sample minus the "
                          "noise-free pass); without it a per-source SinGAN paints the source's mouth back into large "
                          "edits (docs/singan-diversity.md)")
    bank_size: int = Field(16, ge=1, description="faces trained together in one SinGAN bank")
    singan_prior_faces: int = Field(
        0, ge=0, description="train a SinGAN face prior once per run on this many train faces (a seeded choice), "
                             "written to OUT/singan_prior, and fine-tune every bank from it; 0 = every bank from scratch")
    singan_prior_iters: int = Field(200, ge=1, description="face prior: iterations per scale")
    singan_prior_batch: int = Field(4, ge=1, description="face prior: faces per iteration")
    singan_finetune_iters: int | None = Field(
        None, ge=0, description="iterations per scale of each bank fine-tuned from the prior (default: the preset's)")
    unit_size: int = Field(64, ge=1, description="source images per work unit (one shard each)")
    seed: int = Field(0, description="run seed: every edit and sample seed derives from it")
    limit_sources: int | None = Field(
        None, ge=1, description="expand only this many train sources (a seeded choice), e.g. to try settings")
    test_split: Literal["copy", "omit"] = Field("copy", description="copy test originals through untouched, or leave them out")
    gate: QualityGate = QualityGate()
    sifid_weights: str | None = Field(None, description="Inception-v3 weights (.pth) to score SIFID per SinGAN sample")
    ganimation_batch: int = Field(16, ge=1)
    device: str | None = Field(None, description="cuda / cpu; default: CUDA when present")
    fanout: Literal["local", "deployment"] = Field(
        "local", description="run units in this process, or as runs of the per-unit deployment on the gpu pool")
    unit_deployment: str = Field("expand-unit/expand-unit", description="deployment run per unit when fanout='deployment'")

    @model_validator(mode="after")
    def _check(self) -> "ExpandSettings":
        if self.singan_preset not in PRESETS:
            raise ValueError(f"singan_preset {self.singan_preset!r} is not one of {sorted(PRESETS)}")
        try:
            _singan(self)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"singan_overrides {self.singan_overrides}: {exc}") from exc
        if self.uses_ganimation() and self.ganimation is None:
            raise ValueError(f"editor {self.resolved_editor()!r} needs a GANimation checkpoint: give `ganimation`, or "
                             "use the landmark editor (editor='warp', no training needed)")
        if self.singan_prior_faces and _singan(self).skip_coarse_scales < 1:
            raise ValueError("a SinGAN face prior needs a preset that injects the face at the coarsest scale "
                             "(skip_coarse_scales >= 1, as in 'fast')")
        if self.plan.kind == "none" and self.regenerations == 0:
            raise ValueError("nothing to generate: plan.kind='none' and regenerations=0")
        return self

    def resolved_editor(self) -> Literal["warp", "ganimation", "warp+ganimation"] | None:
        """The editor this run uses: None without edits, else the chosen one (ganimation when a checkpoint is given)."""
        if self.plan.kind == "none":
            return None
        return self.editor or ("ganimation" if self.ganimation else "warp")

    def uses_ganimation(self) -> bool:
        return self.resolved_editor() in ("ganimation", "warp+ganimation")

    def edit_stage(self) -> str | None:
        """The manifest stage of the edits: "warp", or "ganimation" (GANimation made the last change)."""
        editor = self.resolved_editor()
        return "ganimation" if self.uses_ganimation() else editor

    def plan_intensity_range(self) -> tuple[float, float]:
        """The intensity range of the run's emotion targets (single-AU sweeps have none: the default)."""
        config = getattr(self.plan, self.plan.kind, None)
        return tuple(getattr(config, "intensity_range", DEFAULT_INTENSITY_RANGE))

    def config_hash(self) -> str:
        exclude: set | dict = {"device", "out", "fanout", "unit_deployment", "ganimation_batch"}
        # Settings added later leave the hash as it was while they keep their defaults, so outputs written
        # before them can still be resumed.
        if self.source_aus == "neutral":
            exclude = exclude | {"source_aus"}
        if not self.singan_residual:
            exclude = exclude | {"singan_residual"}
        if self.singan_prior_faces == 0:
            exclude = exclude | {"singan_prior_faces", "singan_prior_iters", "singan_prior_batch", "singan_finetune_iters"}
        balance_defaults = {name for name, default in (("group_regex", None), ("fill_with", "other"))
                            if getattr(self.plan.balance, name) == default}
        if balance_defaults:
            exclude = {**{name: True for name in exclude}, "plan": {"balance": balance_defaults}}
        return settings_hash(self, exclude=exclude)

    def job(self, run_id: str) -> ExpandJob:
        return ExpandJob(
            prepared=self.prepared, out=self.out, run_name=self.run_name, run_id=run_id,
            ganimation=self.ganimation if self.uses_ganimation() else None,
            editor=self.resolved_editor(), au_shape=self.au_shape, source_aus=self.source_aus,
            source_aus_range=self.plan_intensity_range(), ganimation_batch=self.ganimation_batch,
            regenerations=self.regenerations, singan_preset=self.singan_preset,
            singan_overrides=tuple(sorted(self.singan_overrides.items())), singan_start=self.singan_start,
            singan_noise_gain=self.singan_noise_gain, singan_train_on=self.singan_train_on,
            singan_residual=self.singan_residual,
            singan_finetune_iters=self.singan_finetune_iters if self.singan_prior_faces else None,
            bank_size=self.bank_size, seed=self.seed, gate=self.gate, sifid_weights=self.sifid_weights,
            device=self.device)


def select_rows(settings: ExpandSettings, rows: list[dict]) -> list[dict]:
    """The prepared originals this run uses: all, or a seeded subset of the train sources (test rows kept)."""
    if settings.limit_sources is None:
        return rows
    train = sorted((r for r in rows if r["split"] == "train"),
                   key=lambda r: stable_hash([settings.seed, "limit", r["source_id"]]))[: settings.limit_sources]
    keep = {r["source_id"] for r in train}
    return [r for r in rows if r["split"] == "test" or r["source_id"] in keep]


_PLANNERS = {"single_au": plan_single_au, "interpolate": plan_interpolate, "emotion": plan_emotion, "balance": plan_balance}


def plan_edits(settings: ExpandSettings, rows: list[dict]) -> Plan:
    """The planner's edits for the train sources, trimmed to N per source by a seeded choice."""
    if settings.plan.kind == "none":
        return Plan()
    sources = [{k: r[k] for k in ("source_id", "split", "label", "au_source")} for r in rows]
    if settings.source_aus == "label":  # planners that start from the source's AUs start where the warp does
        for source in sources:
            if source["au_source"] is None and source["label"] in EMOTIONS:
                source["au_source"] = assumed_source_aus(source, "label", settings.plan_intensity_range())
    kind = settings.plan.kind
    plan = _PLANNERS[kind](sources, getattr(settings.plan, kind), run_seed=settings.seed)
    if settings.plan.per_source is None:
        return plan
    by_source: dict[str, list[Edit]] = {}
    for edit in plan.edits:
        by_source.setdefault(edit.source_id, []).append(edit)
    kept = []
    for sid, edits in sorted(by_source.items()):
        order = sorted(edits, key=lambda e: stable_hash([settings.seed, "keep", sid, e.planner, e.edit_index]))
        kept += sorted(order[: settings.plan.per_source], key=lambda e: e.edit_index)
    return Plan(kept, plan.rejects, plan.notes)


def _singan(settings: ExpandSettings):
    return dataclasses.replace(PRESETS[settings.singan_preset], **settings.singan_overrides)


def _bank_singan(settings: ExpandSettings):
    """What each bank trains: the run's SinGAN config, at the fine-tuning iterations when a prior is used."""
    config = _singan(settings)
    if settings.singan_prior_faces and settings.singan_finetune_iters is not None:
        config = dataclasses.replace(config, iters_per_scale=settings.singan_finetune_iters)
    return config


def singan_cost_per_face(config, image_px: int) -> float:
    """A FLOP proxy for training one face: sum over trained scales of pixels x channels^2 x steps."""
    sizes = pyramid_sizes(image_px, image_px, config)
    steps = config.iters_per_scale * (config.d_steps + config.g_steps)
    return float(sum(h * w * scale_channels(i, config) ** 2 * steps
                     for i, (h, w) in enumerate(sizes) if i >= config.skip_coarse_scales))


# CPU seconds per unit of singan_cost_per_face on one thread of the development machine (2-core x86, torch
# 2.x), fitted to CPU times measured for the `fast` and `fast_skip2` presets at 64, 100 and 128 px (14-16e-9;
# benchmarks/bench_singan.py --expand-cost, docs/singan-diversity.md). It overestimates `official` (wider
# channels run more efficiently) by up to 40 %. An estimate for planning, not a promise.
CPU_S_PER_COST_UNIT = 15.0e-9


def singan_trainings(train_on: str, regenerations: int, parents: int, sources_with_parents: int) -> int:
    """SinGANs a plan trains: one per parent (edit, or original when there are no edits) or one per source."""
    if regenerations <= 0:
        return 0
    return sources_with_parents if train_on == "source" else parents


def singan_compute(config, image_px: int, trainings: int, prior_iters: int = 0, prior_batch: int = 1) -> dict:
    """The SinGAN part of a plan's compute: cost in official-preset faces and estimated CPU seconds.

    config: what each bank trains (with a face prior: its fine-tuning iterations). prior_iters > 0 adds the
    prior's one training: prior_iters per scale on prior_batch faces at a time."""
    cost = singan_cost_per_face(config, image_px)
    official = singan_cost_per_face(PRESETS["official"], image_px)
    prior = singan_cost_per_face(dataclasses.replace(config, iters_per_scale=prior_iters), image_px) * prior_batch
    total = trainings * cost + prior
    out = {"singan_trainings": trainings, "singan_cost_per_training_vs_official": round(cost / official, 4),
           "singan_cost_in_official_faces": round(total / official, 2),
           "singan_cpu_s_per_training_estimate": round(cost * CPU_S_PER_COST_UNIT, 3),
           "singan_cpu_s_estimate": round(total * CPU_S_PER_COST_UNIT, 2)}
    if prior_iters:
        out["singan_prior_cpu_s_estimate"] = round(prior * CPU_S_PER_COST_UNIT, 2)
    return out


def describe_plan(settings: ExpandSettings) -> dict:
    """What a run would do (the --dry-run print): counts per stage, edit kind and label, units, compute."""
    rows = select_rows(settings, load_original_rows(settings.prepared))
    plan = plan_edits(settings, rows)
    units = plan_expand_units(rows, settings.unit_size, settings.config_hash(), settings.test_split == "copy", plan.edits)
    train = [r for r in rows if r["split"] == "train"]
    parents = len(plan.edits) if settings.plan.kind != "none" else len(train)
    regenerations = parents * settings.regenerations
    summary = plan_summary(plan, [{k: r[k] for k in ("source_id", "split", "label", "au_source")} for r in rows])
    image_px = int(rows[0]["width"])
    sources_with_parents = len({e.source_id for e in plan.edits}) if settings.plan.kind != "none" else len(train)
    trainings = singan_trainings(settings.singan_train_on, settings.regenerations, parents, sources_with_parents)
    return {
        "config_hash": settings.config_hash(),
        "samples_per_stage": {"original": len(train) + (len(rows) - len(train) if settings.test_split == "copy" else 0),
                              settings.edit_stage() or "edits": len(plan.edits), "singan": regenerations},
        "edits_per_kind": summary["edits_per_kind"],
        "train_labels_before": summary["labels_before"],
        "train_labels_after": {name: summary["labels_after"][name] * (1 + settings.regenerations)
                               - summary["labels_before"][name] * settings.regenerations * (settings.plan.kind != "none")
                               for name in summary["labels_after"]},
        "plan_rejects": summary["rejects_per_reason"],
        "work_units": len(units),
        "compute": {
            "editor": settings.resolved_editor() or "none",
            "ganimation_forwards": len(plan.edits) if settings.uses_ganimation() else 0,
            "warp_edits": len(plan.edits) if settings.resolved_editor() in ("warp", "warp+ganimation") else 0,
            "singan_train_on": settings.singan_train_on,
            "singan_banks": -(-trainings // settings.bank_size),
            "singan_prior_faces": min(settings.singan_prior_faces, len(train)) if trainings else 0,
            **singan_compute(_bank_singan(settings), image_px, trainings,
                             settings.singan_prior_iters if settings.singan_prior_faces and trainings else 0,
                             min(settings.singan_prior_batch, settings.singan_prior_faces, len(train)) or 1),
        },
        "notes": summary["notes"],
    }


def check_expand_inputs(settings: ExpandSettings) -> list[dict]:
    """Refuse, before anything is written, a run whose inputs are wrong; return the prepared originals.

    StartError names the option: the prepared root (must be a `prepare` output with originals), the
    GANimation checkpoint, the SIFID weights, --out inside the prepared tree, a SinGAN start scale the
    preset does not have at this image size.
    """
    prepared = require_dir(settings.prepared, "the prepared dataset", "give the --out folder of `singanimation prepare`")
    if not (prepared / "manifest").is_dir():
        raise StartError(f"{settings.prepared} is not a prepared output (no manifest/ folder): give the --out "
                         "folder of `singanimation prepare`")
    refuse_out_inside(settings.out, settings.prepared, "prepared dataset")
    if settings.uses_ganimation():
        from models.checkpoints import CheckpointError
        from tasks.ganimation import load_ganimation

        require_dir(settings.ganimation, "--ganimation", "give a checkpoint folder from train-ganimation or import-checkpoint")
        try:
            load_ganimation(settings.ganimation, "cpu")
        except (CheckpointError, OSError, ValueError, KeyError) as exc:
            raise StartError(f"--ganimation {settings.ganimation} cannot be loaded ({exc}); give a checkpoint folder "
                             "from train-ganimation or import-checkpoint") from exc
    if settings.sifid_weights is not None:
        require_file_or_dir(settings.sifid_weights, "--sifid-weights")
    try:
        rows = load_original_rows(settings.prepared)
    except FileNotFoundError as exc:
        raise StartError(str(exc)) from exc
    if settings.regenerations:
        check_singan_start(settings, int(rows[0]["width"]))
    return rows


def check_singan_start(settings: ExpandSettings, image_px: int) -> None:
    """The start scale must exist in the preset's pyramid at this size (it used to be clamped to scale 0 silently)."""
    from tasks.expand import parse_start_offset

    config = _singan(settings)
    offset = parse_start_offset(settings.singan_start)
    coarsest = len(pyramid_sizes(image_px, image_px, config)) - 1
    lowest = config.skip_coarse_scales
    if not lowest <= offset <= coarsest:
        raise StartError(f"--singan-start {settings.singan_start}: SinGAN preset {settings.singan_preset!r} at "
                         f"{image_px} px has scales N={coarsest} .. 0, trained from N-{lowest}; "
                         f"choose N-{lowest} .. N-{coarsest}")
    if offset == 0 and settings.singan_residual:
        raise StartError("--singan-start N injects no image, so there is nothing to add the variation to: "
                         "use --singan-sampling plain, or start at N-1")


@task(name="expand-unit", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, tags=["gpu"])
def expand_unit_task(unit: ExpandUnit, edits: list[Edit], job: ExpandJob) -> dict:
    """One unit on the GPU; the `gpu` concurrency slot keeps a worker from running more units than it has GPUs."""
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # embedded Prefect: one process, nothing to share the GPU with
        return expand_unit(unit, edits, job)
    with concurrency("gpu", occupy=1, strict=False):
        return expand_unit(unit, edits, job)


@flow(name="expand-unit", log_prints=True)
def expand_unit_flow(unit: ExpandUnit, edits: list[Edit], job: ExpandJob) -> dict:
    """Entry point of the per-unit deployment that several GPU workers pick up (fanout='deployment')."""
    return expand_unit_task(unit, edits, job)


def _run_units_as_deployments(settings: ExpandSettings, units: list[ExpandUnit], edits_by_unit, job: ExpandJob) -> list[dict]:
    """Fan the units out as runs of the per-unit deployment and wait for all of them."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    runs = [run_deployment(settings.unit_deployment, parameters={"unit": u, "edits": edits_by_unit[u.unit_id], "job": job},
                           timeout=0, as_subflow=True) for u in units]
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(r.id).state for r in runs]
            if all(s is not None and s.is_final() for s in states):
                break
            time.sleep(5)
    failed = [u.unit_id for u, s in zip(units, states) if not s.is_completed()]
    if failed:
        raise RuntimeError(f"{len(failed)} unit runs did not complete: {failed}; re-run to resume")
    return [{"unit_id": u.unit_id, "skipped": False, "written": {}, "rejected": {}} for u in units]


@flow(name="expand", log_prints=True)
def expand(settings: ExpandSettings) -> dict:
    """Expand a prepared dataset; re-running on the same output resumes and never duplicates."""
    t0 = time.perf_counter()

    # 1. Check the inputs before writing anything; then lock the output and record the settings.
    rows = check_expand_inputs(settings)
    config_hash = settings.config_hash()
    with output_lock(settings.out, "expand"):
        write_run_config(settings.out, "expand", settings, config_hash)
        return _expand_locked(settings, rows, config_hash, t0)


def _expand_locked(settings: ExpandSettings, rows: list[dict], config_hash: str, t0: float) -> dict:
    logger = get_run_logger()
    timings: dict[str, float] = {}
    job = settings.job(current_run_id())

    # 2. The prepared originals (both splits) this run uses.
    rows = select_rows(settings, rows)
    logger.info(f"{len(rows)} prepared originals from {settings.prepared}")

    # 3. Plan the GANimation edits of the train sources.
    plan = plan_edits(settings, rows)
    write_rejects_part(settings.out, "plan", plan.rejects)
    logger.info(f"{len(plan.edits)} edits planned ({dict(Counter(e.edit_kind for e in plan.edits))})")

    # 4. Cut into work units (one shard + one manifest part each).
    units = plan_expand_units(rows, settings.unit_size, config_hash, settings.test_split == "copy", plan.edits,
                              committed_units(settings.out))
    retired = retire_units(settings.out, {u.unit_id for u in units})
    if retired:
        logger.info(f"{len(retired)} committed units no longer match the prepared dataset or the plan and were "
                    f"retired (their sources are redone in new units): {', '.join(retired[:5])}")
    edits_by_unit = {u.unit_id: [e for e in plan.edits if e.source_id in set(u.source_ids)] for u in units}
    timings["plan"] = time.perf_counter() - t0

    # 4b. The SinGAN face prior: trained once per run before any unit (resumed when present), shared by all.
    if settings.singan_prior_faces and settings.regenerations:
        t_prior = time.perf_counter()
        prior = ensure_singan_prior(settings.prepared, settings.out, rows, _singan(settings), settings.singan_prior_faces,
                                    settings.singan_prior_iters, settings.singan_prior_batch, settings.seed,
                                    device=settings.device)
        job = dataclasses.replace(job, singan_prior=prior)
        timings["singan prior"] = time.perf_counter() - t_prior
        logger.info(f"SinGAN face prior: {prior or 'none (no train face)'}")

    # 5. Per unit: edits -> SinGAN banks -> regenerations -> commit; committed units are skipped.
    t1 = time.perf_counter()
    progress = _progress_artifact()
    if settings.fanout == "deployment":
        results = _run_units_as_deployments(settings, units, edits_by_unit, job)
    else:
        results = []
        for i, unit in enumerate(tqdm(units, desc="expand units", unit="unit")):
            result = expand_unit_task(unit, edits_by_unit[unit.unit_id], job)
            results.append(result)
            status = ("skipped (already committed)" if result["skipped"]
                      else f"wrote {result['written']}, rejects {result['rejected']}")
            logger.info(f"unit {unit.unit_id} ({i + 1}/{len(units)}): {status}")
            _update_progress(progress, 100.0 * (i + 1) / len(units))
    timings["expand units"] = time.perf_counter() - t1

    # 6. Gather rejects, check the output, write the report and its artifacts.
    merge_rejects(settings.out)
    check = verify(settings.out)
    timings["total"] = time.perf_counter() - t0
    before = Counter(r["label"] for r in rows if r["split"] == "train")
    histogram = label_histogram_png(settings.out, before)
    notes = [f"config hash {config_hash}", f"{sum(r['skipped'] for r in results)} of {len(units)} units were already committed",
             f"{len(retired)} stale units retired",
             f"editor: {settings.resolved_editor() or 'none'}"
             + (f" ({settings.ganimation})" if settings.resolved_editor() == "ganimation" else
                f" (AU shape model: {settings.au_shape or 'FACS default'})" if settings.resolved_editor() == "warp" else
                f" (AU shape model: {settings.au_shape or 'FACS default'}, then {settings.ganimation})"
                if settings.resolved_editor() == "warp+ganimation" else "")
             + f"; SinGAN preset {settings.singan_preset}, start {settings.singan_start}, "
             f"M = {settings.regenerations}", f"verify: {check.summary().splitlines()[0]}",
             f"label histogram before/after: ![labels]({histogram.name})"]
    report_md, sheet = write_report(settings.out, "Expand run", timings, notes=notes, tiles=expand_tiles(settings.out))
    publish_report(report_md.read_text(), key="expand-report")
    _publish_counts_table(settings.out)
    if not check.ok:
        raise RuntimeError(f"output failed verification:\n{check.summary()}")
    return {"out": settings.out, "units": len(units), "skipped_units": sum(r["skipped"] for r in results),
            "retired_units": len(retired), "verify_ok": check.ok, "report": str(report_md), "contact_sheet": str(sheet),
            "label_histogram": str(histogram)}


def _progress_artifact():
    try:
        from prefect.artifacts import create_progress_artifact

        return create_progress_artifact(progress=0.0, key=f"expand-progress-{random.randrange(1 << 30)}",
                                        description="expand units committed (%)")
    except Exception:  # depends on the Prefect backend
        return None


def _update_progress(artifact_id, percent: float) -> None:
    if artifact_id is None:
        return
    try:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact_id=artifact_id, progress=percent)
    except Exception:
        pass


def _publish_counts_table(out: str) -> None:
    try:
        from prefect.artifacts import create_table_artifact

        from tasks.report import counts_by

        rows = [{"split": s, "stage": st, "label": EMOTIONS[lb], "samples": n}
                for (s, st, lb), n in sorted(counts_by(out).items())]
        create_table_artifact(table=rows, key="expand-counts", description="samples per split, stage and label")
    except Exception as exc:
        get_run_logger().warning(f"could not publish the counts table: {exc}")
