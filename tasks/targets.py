"""AU target planners: turn source samples into GANimation edits (single-AU sweeps, interpolations, emotions, balance)."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from manifests.schema import AU_INDEX, AU_NAMES, EMOTIONS, N_AUS, SPLITS, stable_hash
from tasks.errors import RejectError

STAGE = "targets"

# EMFACS prototypes restricted to OpenFace's 17 intensity AUs. Disgust is 9+15+16 in EMFACS; OpenFace has
# no AU16 (lower lip depressor), so AU10 (upper lip raiser) and AU17 (chin raiser) stand in for it.
EMOTION_PROTOTYPES: dict[int, tuple[str, ...]] = {
    1: ("AU01", "AU02", "AU05", "AU26"),                          # Surprise
    2: ("AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26"),  # Fear
    3: ("AU09", "AU10", "AU15", "AU17"),                          # Disgust
    4: ("AU06", "AU12"),                                          # Happiness
    5: ("AU01", "AU04", "AU15"),                                  # Sadness
    6: ("AU04", "AU05", "AU07", "AU23"),                          # Anger
    7: (),                                                        # Neutral
}

# OpenFace 1.5..3 out of 5: clearly visible; single AUs near 5 look caricatured.
DEFAULT_INTENSITY_RANGE: tuple[float, float] = (0.3, 0.6)
DEFAULT_SWEEP_AUS: tuple[str, ...] = ("AU01", "AU02", "AU04", "AU05", "AU45", "AU10", "AU12", "AU15", "AU25")
DEFAULT_SWEEP_INTENSITIES: tuple[float, ...] = (0.0, 0.33, 0.66, 1.0)

PLANNERS: tuple[str, ...] = ("single_au", "interpolate", "emotion", "balance")
REASONS: tuple[str, ...] = (
    "bad_split",        # split is not train/test
    "bad_label",        # label is not an emotion id 1..7 (or missing where the planner needs it)
    "bad_au_source",    # au_source is not 17 finite values in 0..1
    "missing_au_source",  # the planner needs the source's AUs and it has none
    "no_target_source",   # interpolate to another image: no other train source qualifies
)


# ---------------------------------------------------------------- shared definitions


def _check_intensity_range(name: str, value: tuple[float, float]) -> None:
    lo, hi = value
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"{name}={value}: must satisfy 0 <= low <= high <= 1 (AU intensities / 5)")


def _check_emotions(name: str, emotions: Sequence[int], allow_empty: bool = False) -> None:
    bad = [e for e in emotions if isinstance(e, bool) or e not in EMOTIONS]
    if bad:
        raise ValueError(f"{name}: unknown emotion id(s) {bad}; ids are {EMOTIONS}")
    if len(set(emotions)) != len(emotions):
        raise ValueError(f"{name}={tuple(emotions)} repeats an emotion")
    if not emotions and not allow_empty:
        raise ValueError(f"{name} is empty")


def _check_au_names(name: str, au_names: Sequence[str]) -> None:
    unknown = [a for a in au_names if a not in AU_INDEX]
    if unknown:
        raise ValueError(f"{name}: unknown AU name(s) {unknown}; known: {' '.join(AU_NAMES)}")
    if len(set(au_names)) != len(au_names):
        raise ValueError(f"{name}={tuple(au_names)} repeats an AU")


def prototype_vector(
    emotion: int,
    rng: np.random.Generator,
    intensity_range: tuple[float, float] = DEFAULT_INTENSITY_RANGE,
    jitter: float = 0.05,
    au_names: Sequence[str] | None = None,
) -> np.ndarray:
    """AU vector [17] (0..1) showing `emotion`: one base intensity drawn from the range, +- jitter per AU.

    au_names restricts the result to those AUs (others zero) after drawing, so the values of the kept AUs
    do not depend on the restriction.
    """
    _check_emotions("emotion", [emotion])
    _check_intensity_range("intensity_range", intensity_range)
    if not 0.0 <= jitter <= 0.5:
        raise ValueError(f"jitter={jitter}: must be in 0..0.5")
    lo, hi = intensity_range
    base = rng.uniform(lo, hi)
    names = EMOTION_PROTOTYPES[emotion]
    values = np.clip(base + rng.uniform(-jitter, jitter, len(names)), lo, hi)
    out = np.zeros(N_AUS, np.float64)
    keep = set(AU_NAMES if au_names is None else au_names)
    for name, value in zip(names, values):
        if name in keep:
            out[AU_INDEX[name]] = value
    return out


def prototype_centre(emotion: int, intensity_range: tuple[float, float] = DEFAULT_INTENSITY_RANGE) -> np.ndarray:
    """The prototype at the middle of the intensity range, [17]."""
    out = np.zeros(N_AUS, np.float64)
    for name in EMOTION_PROTOTYPES[emotion]:
        out[AU_INDEX[name]] = 0.5 * sum(intensity_range)
    return out


def nearest_emotion(aus: np.ndarray, au_names: Sequence[str] = AU_NAMES,
                    intensity_range: tuple[float, float] = DEFAULT_INTENSITY_RANGE) -> int:
    """The emotion whose prototype centre is closest (L2 over au_names) to `aus` [17]; ties go to the lower id."""
    idx = [AU_INDEX[a] for a in au_names]
    aus = np.asarray(aus, np.float64)[idx]
    distances = {e: float(np.sum((aus - prototype_centre(e, intensity_range)[idx]) ** 2)) for e in EMOTIONS}
    return min(distances, key=lambda e: (distances[e], e))


def edit_seed(run_seed: int, source_id: str, planner: str, edit_index: int) -> int:
    """The seed of one edit: depends only on (run seed, source, planner, edit index); fits int64."""
    return int(stable_hash({"run": int(run_seed), "source": source_id, "planner": planner, "edit": edit_index}, 15), 16)


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(int(stable_hash(list(parts), 15), 16))


# ---------------------------------------------------------------- sources, edits, plans


@dataclass(frozen=True)
class Source:
    source_id: str
    split: str
    label: int | None
    au_source: tuple[float, ...] | None   # [17] 0..1


@dataclass(frozen=True)
class Edit:
    """One planned GANimation edit of one source."""

    source_id: str
    planner: str                     # single_au / interpolate / emotion / balance
    edit_index: int                  # position among this planner's edits of this source
    edit_kind: str                   # manifest edit_kind: single_au / interpolate / emotion
    au_target: tuple[float, ...]     # [17] 0..1, AU_NAMES order
    alpha: float | None              # interpolation weight; None for other kinds
    label: int                       # emotion id the result is trained as
    label_kind: str                  # inherited / target
    seed: int
    target: str                      # what was aimed at: "AU12=0.66", "emotion:Fear", "source:<id>"

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id, "planner": self.planner, "edit_index": self.edit_index,
            "edit_kind": self.edit_kind, "au_target": list(self.au_target), "alpha": self.alpha,
            "label": self.label, "label_kind": self.label_kind, "seed": self.seed, "target": self.target,
        }


@dataclass
class Plan:
    edits: list[Edit] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)   # {source_id, stage="targets", reason, detail}
    notes: list[str] = field(default_factory=list)      # plan-level facts for the dry-run print

    def extend(self, other: "Plan") -> "Plan":
        """Both plans in one (rejects of the same source and reason are kept once)."""
        seen = {(r["source_id"], r["reason"]) for r in self.rejects}
        rejects = self.rejects + [r for r in other.rejects if (r["source_id"], r["reason"]) not in seen]
        return Plan(self.edits + other.edits, rejects, self.notes + other.notes)


def _as_records(sources: Any) -> list[Mapping[str, Any]]:
    if hasattr(sources, "to_dict") and hasattr(sources, "columns"):  # pandas DataFrame, without importing pandas
        return sources.to_dict("records")
    return list(sources)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def _parse_aus(value: Any, source_id: str) -> tuple[float, ...] | None:
    if _is_missing(value):
        return None
    try:
        aus = np.asarray(list(value), dtype=np.float64)
    except (TypeError, ValueError) as error:
        detail = f"{source_id}: au_source {value!r} is not a list of numbers ({error})"
        raise RejectError(STAGE, "bad_au_source", detail) from error
    if aus.shape != (N_AUS,):
        raise RejectError(STAGE, "bad_au_source", f"{source_id}: au_source has {aus.size} values, expected {N_AUS}")
    if not np.all(np.isfinite(aus)) or np.any(aus < 0.0) or np.any(aus > 1.0):
        raise RejectError(STAGE, "bad_au_source", f"{source_id}: au_source must be 17 finite values in 0..1 "
                                                  f"(OpenFace intensity / 5), got {aus.round(3).tolist()}")
    return tuple(float(v) for v in aus)


def _parse_label(value: Any, source_id: str) -> int | None:
    if _is_missing(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)  # a pandas int column with gaps turns into floats: 4.0 is still Happiness
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in EMOTIONS:
        raise RejectError(STAGE, "bad_label", f"{source_id}: label {value!r} is not an emotion id {sorted(EMOTIONS)}")
    return int(value)


def read_sources(sources: Any) -> tuple[list[Source], list[dict]]:
    """Validate rows (dicts or a DataFrame with source_id, split, label, au_source) -> (sources, reject rows)."""
    records = _as_records(sources)
    parsed: list[Source] = []
    rejects: list[dict] = []
    seen: set[str] = set()
    for i, row in enumerate(records):
        missing = [k for k in ("source_id", "split", "label", "au_source") if k not in row]
        if missing:
            raise ValueError(f"source row {i} lacks column(s) {missing}; needs source_id, split, label, au_source")
        source_id = str(row["source_id"])
        if source_id in seen:
            raise ValueError(f"source_id {source_id!r} appears twice; edit seeds derive from it, so ids must be unique")
        seen.add(source_id)
        try:
            if row["split"] not in SPLITS:
                raise RejectError(STAGE, "bad_split", f"{source_id}: split {row['split']!r} is not one of {SPLITS}")
            parsed.append(Source(source_id, str(row["split"]), _parse_label(row["label"], source_id),
                                 _parse_aus(row["au_source"], source_id)))
        except RejectError as error:
            rejects.append(error.as_row(source_id))
    return parsed, rejects


def _train(sources: list[Source]) -> list[Source]:
    """Only the training split is ever edited; test sources never seed a generated sample."""
    return sorted((s for s in sources if s.split == "train"), key=lambda s: s.source_id)


def _reject(rejects: list[dict], source: Source, reason: str, detail: str) -> None:
    rejects.append(RejectError(STAGE, reason, f"{source.source_id}: {detail}").as_row(source.source_id))


def _vector(values: np.ndarray | Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, np.float64))


# ---------------------------------------------------------------- single_au


@dataclass(frozen=True)
class SingleAUConfig:
    """Sweep each AU over the intensities, the other AUs kept at the source's values; label inherited."""

    au_names: tuple[str, ...] = DEFAULT_SWEEP_AUS
    intensities: tuple[float, ...] = DEFAULT_SWEEP_INTENSITIES

    def __post_init__(self) -> None:
        _check_au_names("SingleAUConfig.au_names", self.au_names)
        if not self.au_names:
            raise ValueError("SingleAUConfig.au_names is empty")
        if not self.intensities:
            raise ValueError("SingleAUConfig.intensities is empty")
        bad = [v for v in self.intensities if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0)]
        if bad:
            raise ValueError(f"SingleAUConfig.intensities: {bad} outside 0..1 (AU intensities are OpenFace / 5)")
        if len(set(self.intensities)) != len(self.intensities):
            raise ValueError(f"SingleAUConfig.intensities={self.intensities} repeats a value")


def plan_single_au(sources: Any, config: SingleAUConfig = SingleAUConfig(), run_seed: int = 0) -> Plan:
    parsed, rejects = read_sources(sources)
    edits: list[Edit] = []
    for source in _train(parsed):
        if source.label is None:
            _reject(rejects, source, "bad_label", "no label to inherit")
            continue
        if source.au_source is None:
            _reject(rejects, source, "missing_au_source", "single-AU sweeps keep the source's other AUs, "
                                                          "so they need its AUs")
            continue
        index = 0
        for name in config.au_names:
            for value in config.intensities:
                target = np.asarray(source.au_source, np.float64).copy()
                target[AU_INDEX[name]] = value
                edits.append(Edit(source.source_id, "single_au", index, "single_au", _vector(target), None,
                                  source.label, "inherited", edit_seed(run_seed, source.source_id, "single_au", index),
                                  f"{name}={value:g}"))
                index += 1
    return Plan(edits, rejects)


# ---------------------------------------------------------------- emotion


@dataclass(frozen=True)
class EmotionConfig:
    """One edit per emotion per source, to a jittered EMFACS prototype; label = the target emotion."""

    emotions: tuple[int, ...] = tuple(EMOTIONS)
    skip_source_label: bool = True        # no "Happiness" edit of a face already labelled Happiness
    intensity_range: tuple[float, float] = DEFAULT_INTENSITY_RANGE
    jitter: float = 0.05

    def __post_init__(self) -> None:
        _check_emotions("EmotionConfig.emotions", self.emotions)
        _check_intensity_range("EmotionConfig.intensity_range", self.intensity_range)
        if not 0.0 <= self.jitter <= 0.5:
            raise ValueError(f"EmotionConfig.jitter={self.jitter}: must be in 0..0.5")


def _emotion_edit(source: Source, planner: str, index: int, emotion: int, run_seed: int,
                  intensity_range: tuple[float, float], jitter: float, label_kind: str = "target",
                  note: str = "emotion") -> Edit:
    """An edit toward emotion's prototype at a seeded intensity, labelled with it ("target"), or, for a source's
    own emotion, with the label the source already has ("inherited", note "own")."""
    seed = edit_seed(run_seed, source.source_id, planner, index)
    target = prototype_vector(emotion, np.random.default_rng(seed), intensity_range, jitter)
    return Edit(source.source_id, planner, index, "emotion", _vector(target), None, emotion, label_kind, seed,
                f"{note}:{EMOTIONS[emotion]}")


def plan_emotion(sources: Any, config: EmotionConfig = EmotionConfig(), run_seed: int = 0) -> Plan:
    parsed, rejects = read_sources(sources)
    edits: list[Edit] = []
    for source in _train(parsed):
        if source.label is None and config.skip_source_label:
            _reject(rejects, source, "bad_label", "no label, so the emotion it already shows is unknown")
            continue
        emotions = [e for e in config.emotions if not (config.skip_source_label and e == source.label)]
        for index, emotion in enumerate(emotions):
            edits.append(_emotion_edit(source, "emotion", index, emotion, run_seed,
                                       config.intensity_range, config.jitter))
    return Plan(edits, rejects)


# ---------------------------------------------------------------- interpolate


@dataclass(frozen=True)
class InterpolateConfig:
    """alpha steps from the source's AUs to a target: an emotion prototype, another train image's AUs, or the
    prototype of the source's own emotion at another intensity ("own": a label-preserving edit that makes the
    expression weaker or stronger; the label is always inherited).

    label: inherited while alpha < label_threshold, the target's label from there on.
    """

    alphas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    target: Literal["emotion", "source", "own"] = "emotion"
    n_targets: int = 1                                  # targets per source
    emotions: tuple[int, ...] = (1, 2, 3, 4, 5, 6)      # candidates when target="emotion"
    label_threshold: float = 0.5
    intensity_range: tuple[float, float] = DEFAULT_INTENSITY_RANGE
    jitter: float = 0.05

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ValueError("InterpolateConfig.alphas is empty")
        bad = [a for a in self.alphas if not (isinstance(a, (int, float)) and 0.0 < a <= 1.0)]
        if bad:
            raise ValueError(f"InterpolateConfig.alphas: {bad} outside (0, 1]")
        if list(self.alphas) != sorted(set(self.alphas)):
            raise ValueError(f"InterpolateConfig.alphas={self.alphas}: must be strictly increasing")
        if self.target not in ("emotion", "source", "own"):
            raise ValueError(f"InterpolateConfig.target={self.target!r}: must be 'emotion', 'source' or 'own'")
        if isinstance(self.n_targets, bool) or not isinstance(self.n_targets, int) or self.n_targets < 1:
            raise ValueError(f"InterpolateConfig.n_targets={self.n_targets!r}: must be an int >= 1")
        _check_emotions("InterpolateConfig.emotions", self.emotions)
        if not 0.0 <= self.label_threshold <= 1.0:
            raise ValueError(f"InterpolateConfig.label_threshold={self.label_threshold}: must be in 0..1")
        _check_intensity_range("InterpolateConfig.intensity_range", self.intensity_range)
        if not 0.0 <= self.jitter <= 0.5:
            raise ValueError(f"InterpolateConfig.jitter={self.jitter}: must be in 0..0.5")


def _pick(rng: np.random.Generator, candidates: Sequence[Any], k: int) -> list[Any]:
    """k distinct candidates (fewer if there are fewer), in a seeded order."""
    chosen = rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
    return [candidates[int(i)] for i in chosen]


def _target_pools(train: list[Source]) -> dict[int | None, list[Source]]:
    """For each source label: the train sources another image's AUs may come from (AUs known, other label)."""
    usable = [s for s in train if s.au_source is not None and s.label is not None]
    return {label: [s for s in usable if s.label != label] for label in {s.label for s in train}}


def _interpolation_targets(source: Source, pools: Mapping[int | None, list[Source]], config: InterpolateConfig,
                           run_seed: int) -> list[tuple[np.ndarray, int, str]]:
    """[(target AUs [17], target label, description)] for one source."""
    rng = _rng(run_seed, "interpolate-targets", source.source_id)
    if config.target == "own":
        return [(prototype_vector(source.label, rng, config.intensity_range, config.jitter), int(source.label),
                 f"own:{EMOTIONS[source.label]}") for _ in range(config.n_targets)]
    if config.target == "emotion":
        emotions = [e for e in config.emotions if e != source.label]
        targets = []
        for emotion in _pick(rng, emotions, config.n_targets):
            values = prototype_vector(emotion, rng, config.intensity_range, config.jitter)
            targets.append((values, emotion, f"emotion:{EMOTIONS[emotion]}"))
        return targets
    return [(np.asarray(o.au_source, np.float64), int(o.label), f"source:{o.source_id}")
            for o in _pick(rng, pools.get(source.label, []), config.n_targets)]


def plan_interpolate(sources: Any, config: InterpolateConfig = InterpolateConfig(), run_seed: int = 0) -> Plan:
    parsed, rejects = read_sources(sources)
    train = _train(parsed)
    pools = _target_pools(train) if config.target == "source" else {}
    edits: list[Edit] = []
    for source in train:
        if source.label is None:
            _reject(rejects, source, "bad_label", "no label to inherit below the threshold")
            continue
        if source.au_source is None:
            _reject(rejects, source, "missing_au_source", "interpolation starts from the source's AUs")
            continue
        if config.target == "own" and not EMOTION_PROTOTYPES.get(source.label):
            _reject(rejects, source, "bad_label", f"label {source.label} shows no AUs: nothing to make weaker or "
                                                  "stronger")
            continue
        targets = _interpolation_targets(source, pools, config, run_seed)
        if not targets:
            _reject(rejects, source, "no_target_source", "no other train source with AUs and another label")
            continue
        start = np.asarray(source.au_source, np.float64)
        for t, (goal, goal_label, description) in enumerate(targets):
            for a, alpha in enumerate(config.alphas):
                index = t * len(config.alphas) + a
                past = alpha >= config.label_threshold and goal_label != source.label
                edits.append(Edit(
                    source.source_id, "interpolate", index, "interpolate",
                    # The clip only removes float rounding: a convex mix of values in 0..1 stays in 0..1.
                    _vector(np.clip((1.0 - alpha) * start + alpha * goal, 0.0, 1.0)),
                    float(alpha), goal_label if past else source.label, "target" if past else "inherited",
                    edit_seed(run_seed, source.source_id, "interpolate", index), description))
    return Plan(edits, rejects)


# ---------------------------------------------------------------- balance


@dataclass(frozen=True)
class BalanceConfig:
    """Emotion edits assigned to sources of other classes until the train labels follow `wanted`.

    wanted: label id -> weight (normalised here); None = uniform over the labels present in train.
    cap_per_source: at most this many balance edits per source.
    max_edits: optional cap on the total.
    group_regex: optional pattern searched in each source_id; its first group (else the whole match) names the
                 source's group, e.g. "(S[0-9]+)_" for CK+ subjects. A source is then not given a label that its
                 group already shows in train (a person gets the expressions they lack); sources the pattern
                 does not match are their own group.
    fill_with:   "other" (default): a class's deficit is filled with edits of other classes' sources toward its
                 prototype (labelled with the target: the source's own expression may show through, e.g. a smile's
                 teeth under Sadness). "own": with edits of the class's own sources toward their own prototype at
                 another intensity (weaker or stronger, the label inherited: no such label noise), round robin
                 over the class's sources; group_regex does not apply. A class whose prototype shows no AUs
                 (Neutral) cannot be filled this way and is reported unfilled.
    """

    wanted: Mapping[int, float] | None = None
    cap_per_source: int = 2
    max_edits: int | None = None
    intensity_range: tuple[float, float] = DEFAULT_INTENSITY_RANGE
    jitter: float = 0.05
    group_regex: str | None = None
    fill_with: Literal["other", "own"] = "other"

    def __post_init__(self) -> None:
        if self.fill_with not in ("other", "own"):
            raise ValueError(f"BalanceConfig.fill_with={self.fill_with!r}: must be 'other' or 'own'")
        if self.wanted is not None:
            # JSON turns int keys into strings; take them back so configs round-trip.
            wanted = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in self.wanted.items()}
            object.__setattr__(self, "wanted", wanted)
            _check_emotions("BalanceConfig.wanted", list(self.wanted))
            bad = {k: v for k, v in self.wanted.items() if not (math.isfinite(v) and v >= 0.0)}
            if bad:
                raise ValueError(f"BalanceConfig.wanted: weights must be finite and >= 0, got {bad}")
            if sum(self.wanted.values()) <= 0.0:
                raise ValueError("BalanceConfig.wanted: the weights sum to 0")
        if isinstance(self.cap_per_source, bool) or not isinstance(self.cap_per_source, int) or self.cap_per_source < 1:
            raise ValueError(f"BalanceConfig.cap_per_source={self.cap_per_source!r}: must be an int >= 1")
        if self.max_edits is not None and (not isinstance(self.max_edits, int) or self.max_edits < 0):
            raise ValueError(f"BalanceConfig.max_edits={self.max_edits!r}: must be None or an int >= 0")
        _check_intensity_range("BalanceConfig.intensity_range", self.intensity_range)
        if not 0.0 <= self.jitter <= 0.5:
            raise ValueError(f"BalanceConfig.jitter={self.jitter}: must be in 0..0.5")
        if self.group_regex is not None:
            try:
                re.compile(self.group_regex)
            except re.error as err:
                raise ValueError(f"BalanceConfig.group_regex={self.group_regex!r}: {err}") from None


def source_group(source_id: str, pattern: str | None) -> str:
    """The group a source belongs to under `pattern` (first group, else whole match); itself when unmatched."""
    if pattern is None:
        return source_id
    match = re.search(pattern, source_id)
    if match is None:
        return source_id
    return match.group(1) if match.groups() and match.group(1) is not None else match.group(0)


def balance_targets(counts: Mapping[int, int], wanted: Mapping[int, float] | None = None) -> dict[int, int]:
    """Per-label totals that follow `wanted` reached by only adding samples: the smallest scale covering every count.

    Labels with weight 0 keep their count. E.g. uniform over RAF-DB train lifts every class to 4772.
    """
    if wanted is None:
        wanted = {label: 1.0 for label, n in counts.items() if n > 0}
    total_weight = sum(wanted.values())
    shares = {label: w / total_weight for label, w in wanted.items() if w > 0}
    if not shares:
        raise ValueError("wanted distribution has no positive weight")
    scale = max(counts.get(label, 0) / share for label, share in shares.items())
    targets = {label: int(counts.get(label, 0)) for label in counts}
    for label, share in shares.items():
        targets[label] = max(int(counts.get(label, 0)), int(round(share * scale)))
    return dict(sorted(targets.items()))


def plan_balance(sources: Any, config: BalanceConfig = BalanceConfig(), run_seed: int = 0) -> Plan:
    """Fill the classes' deficits (balance_targets - counts) with emotion edits of other-class train sources
    (_fill_with_other; config.fill_with "own": own-emotion edits of the class's own sources, _fill_with_own).

    Round r (r < cap_per_source) gives each source, in a seeded order, at most one more edit, to the class
    with the largest remaining deficit among those it is not (and, if possible, has not been given yet).
    This spreads edits evenly over sources and fills the deficits in step.
    """
    parsed, rejects = read_sources(sources)
    train = []
    for source in _train(parsed):
        if source.label is None:
            _reject(rejects, source, "bad_label", "no label, so it cannot be counted or balanced")
        else:
            train.append(source)
    counts = Counter(s.label for s in train)
    targets = balance_targets(dict(counts), config.wanted) if train else {}
    deficits = {label: n - counts.get(label, 0) for label, n in targets.items()}
    order = sorted(train, key=lambda s: stable_hash([int(run_seed), "balance-order", s.source_id]))
    budget = sum(deficits.values()) if config.max_edits is None else min(config.max_edits, sum(deficits.values()))
    fill = _fill_with_own if config.fill_with == "own" else _fill_with_other
    edits = fill(order, deficits, budget, config, run_seed)
    notes = [f"balance: {EMOTIONS[label]} {counts.get(label, 0)} -> wanted {n}, planned "
             f"{n - counts.get(label, 0) - deficits[label]}, unfilled {deficits[label]}"
             for label, n in targets.items()]
    return Plan(edits, rejects, notes)


def _fill_with_other(order: list[Source], deficits: dict[int, int], budget: int, config: BalanceConfig,
                     run_seed: int) -> list[Edit]:
    """Other-class balance edits: round r (r < cap_per_source) gives each source, in the seeded order, at most one
    more edit, toward the neediest label it may get (not its own; with group_regex none its group shows in train).
    Updates deficits in place."""
    group_labels: dict[str, set[int]] = {}
    for s in order:
        group_labels.setdefault(source_group(s.source_id, config.group_regex), set()).add(s.label)  # type: ignore[arg-type]
    taken = {s.source_id: group_labels[source_group(s.source_id, config.group_regex)] for s in order}
    given: dict[str, list[int]] = {s.source_id: [] for s in order}
    edits: list[Edit] = []
    for _ in range(config.cap_per_source):
        for source in order:
            if len(edits) >= budget:
                break
            label = _neediest(deficits, taken[source.source_id], given[source.source_id])
            if label is None:
                continue
            deficits[label] -= 1
            index = len(given[source.source_id])
            given[source.source_id].append(label)
            edits.append(_emotion_edit(source, "balance", index, label, run_seed, config.intensity_range, config.jitter))
    return edits


def _fill_with_own(order: list[Source], deficits: dict[int, int], budget: int, config: BalanceConfig,
                   run_seed: int) -> list[Edit]:
    """Own-emotion balance edits: round r (r < cap_per_source) gives each source of a class that still has a deficit,
    in the seeded order, one more edit toward its own label's prototype at an intensity drawn from
    config.intensity_range; labels are inherited. Updates deficits in place."""
    edits: list[Edit] = []
    given: dict[str, int] = {}
    for _ in range(config.cap_per_source):
        for source in order:
            label = int(source.label)  # type: ignore[arg-type]
            if len(edits) >= budget or deficits.get(label, 0) <= 0 or not EMOTION_PROTOTYPES.get(label):
                continue
            index = given.get(source.source_id, 0)
            given[source.source_id] = index + 1
            deficits[label] -= 1
            edits.append(_emotion_edit(source, "balance", index, label, run_seed, config.intensity_range,
                                       config.jitter, label_kind="inherited", note="own"))
    return edits


def _neediest(deficits: Mapping[int, int], taken: set[int], given: list[int]) -> int | None:
    """The label with the largest remaining deficit outside `taken`; labels not yet given first."""
    open_labels = [label for label, d in deficits.items() if d > 0 and label not in taken]
    if not open_labels:
        return None
    fresh = [label for label in open_labels if label not in given] or open_labels
    return max(fresh, key=lambda label: (deficits[label], -label))


# ---------------------------------------------------------------- summary


def plan_summary(plan: Plan | Iterable[Edit], sources: Any) -> dict[str, Any]:
    """Counts for --dry-run: edits per kind and planner, train labels before/after, rejects by reason."""
    edits = plan.edits if isinstance(plan, Plan) else list(plan)
    parsed, source_rejects = read_sources(sources)
    before = Counter(s.label for s in parsed if s.split == "train" and s.label is not None)
    added = Counter(e.label for e in edits)
    names = {label: EMOTIONS[label] for label in EMOTIONS}
    reasons = Counter(r["reason"] for r in (plan.rejects if isinstance(plan, Plan) else source_rejects))
    return {
        "edits": len(edits),
        "edits_per_kind": dict(sorted(Counter(e.edit_kind for e in edits).items())),
        "edits_per_planner": dict(sorted(Counter(e.planner for e in edits).items())),
        "labels_before": {names[k]: before.get(k, 0) for k in EMOTIONS},
        "labels_added": {names[k]: added.get(k, 0) for k in EMOTIONS},
        "labels_after": {names[k]: before.get(k, 0) + added.get(k, 0) for k in EMOTIONS},
        "test_sources": sum(1 for s in parsed if s.split == "test"),
        "rejects_per_reason": dict(sorted(reasons.items())),
        "notes": list(plan.notes) if isinstance(plan, Plan) else [],
    }


def format_plan_summary(summary: Mapping[str, Any]) -> str:
    """The dry-run print of plan_summary's dict."""
    lines = [f"edits: {summary['edits']}"]
    lines += [f"  {kind}: {n}" for kind, n in summary["edits_per_kind"].items()]
    lines.append(f"{'label':<10} {'before':>8} {'added':>8} {'after':>8}   (train split; "
                 f"{summary['test_sources']} test sources untouched)")
    for name, n in summary["labels_before"].items():
        lines.append(f"{name:<10} {n:>8} {summary['labels_added'][name]:>8} {summary['labels_after'][name]:>8}")
    if summary["rejects_per_reason"]:
        lines.append("rejects: " + ", ".join(f"{r}: {n}" for r, n in summary["rejects_per_reason"].items()))
    lines += summary["notes"]
    return "\n".join(lines)
