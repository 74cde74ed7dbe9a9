"""`rococap evaluate`: caption metrics against references, modality agreement, length statistics.

Both captions are preprocessed as the ImageCLEFmedical caption evaluators do: lower-case, every run
of digits -> "number", every character of `string.punctuation` removed. A pair that is empty on both
sides scores 1 on every metric. Metrics come from maintained libraries: NLTK (BLEU-1..4, sentence
BLEU with smoothing method 1 for n >= 2), rouge-score (ROUGE-1 and ROUGE-L F), pycocoevalcap (CIDEr-D,
and METEOR through its bundled Java jar when `java` is installed), bert-score (BERTScore with
microsoft/deberta-xlarge-mnli, only when that model can be loaded).
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import statistics
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rococap.errors import RococapError
from rococap.output import complete_records

log = logging.getLogger(__name__)

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DIGITS = re.compile(r"\d+")

# Modality CUIs of ROCOv2 and the names used in reports.
MODALITY_CUIS = {
    "C0040405": "CT",
    "C0024485": "MRI",
    "C1306645": "X-ray",
    "C0041618": "Ultrasound",
    "C0002978": "Angiography",
    "C0032743": "PET",
}
MODALITIES = tuple(dict.fromkeys(MODALITY_CUIS.values()))
NO_MODALITY = "none"
# Keyword rules on the lower-cased caption; the modality whose keyword comes first in the text wins.
MODALITY_PATTERNS = {
    "CT": r"\bct\b|\bcta\b|\bhrct\b|\bcect\b|\bmdct\b|computed tomograph|computerized tomograph|\bct[- ]scan",
    "MRI": r"\bmri\b|\bmr\b|\bmra\b|magnetic resonance|\bflair\b|\bt1\b|\bt2\b|t1-weighted|t2-weighted|\bdwi\b|"
    r"diffusion[- ]weighted",
    "X-ray": r"x-?ray|radiograph|\bcxr\b|plain film|chest film|\bkub\b",
    "Ultrasound": r"ultraso|sonograph|\bus\b|doppler|echocardiog|\bechograph|\btte\b|\btee\b",
    "Angiography": r"angiogra|\bdsa\b|arteriogra|venogra|\bangio\b",
    "PET": r"\bpet\b|positron|\bfdg\b",
}
_MODALITY_REGEX = {name: re.compile(pattern) for name, pattern in MODALITY_PATTERNS.items()}
METRIC_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge1_f", "rougeL_f", "meteor", "cider", "bertscore_f1")


def preprocess(text: str) -> str:
    """ImageCLEFmedical caption preprocessing."""
    text = _DIGITS.sub("number", str(text).lower())
    return " ".join(text.translate(_PUNCTUATION).split())


def modality_of_caption(caption: str) -> str:
    """The modality named earliest in the caption (keyword rules above), or 'none'."""
    text = str(caption).lower()
    best, best_position = NO_MODALITY, len(text) + 1
    for name, regex in _MODALITY_REGEX.items():
        found = regex.search(text)
        if found and found.start() < best_position:
            best, best_position = name, found.start()
    return best


def modality_of_cuis(cuis) -> str:
    """The first modality CUI in the image's CUI list (ROCOv2 lists it first), or 'none'."""
    if cuis is None or (isinstance(cuis, float) and pd.isna(cuis)):
        return NO_MODALITY
    items = cuis.split(";") if isinstance(cuis, str) else list(cuis)
    for cui in items:
        if cui.strip() in MODALITY_CUIS:
            return MODALITY_CUIS[cui.strip()]
    return NO_MODALITY


def read_captions_csv(path: str | Path) -> pd.DataFrame:
    """A rococap CSV (or any CSV with image_id and generated_caption), even from an unfinished run."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise RococapError(f"cannot read {path}: {exc.strerror}") from None
    first_line = text.split("\n", 1)[0].rstrip("\r")
    width = len(next(csv.reader([first_line]))) if first_line else 0
    records, _ = complete_records(text, width) if width else ([], 0)
    if not records:
        raise RococapError(f"{path} holds no CSV header: pass a file written by rococap run or collect")
    frame = pd.DataFrame(records[1:], columns=records[0])
    if "reference_caption" in frame.columns and "original_caption" not in frame.columns:
        frame = frame.rename(columns={"reference_caption": "original_caption"})
    missing = {"image_id", "generated_caption"} - set(frame.columns)
    if missing:
        raise RococapError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
    return frame


def read_reference_csv(path: str | Path) -> pd.DataFrame:
    """image_id with caption and/or cui columns (e.g. ROCOv2's caption and concept files)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise RococapError(f"cannot read references {path}: {exc}") from None
    if "image_id" not in frame.columns and "ID" in frame.columns:
        frame = frame.rename(columns={"ID": "image_id", "Caption": "caption", "CUIs": "cui"})
    if "image_id" not in frame.columns:
        raise RococapError(f"references {path} need an image_id column")
    return frame.drop_duplicates("image_id").set_index("image_id")


def read_cui_names(path: str | Path | None) -> dict[str, str]:
    if path is None:
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return dict(zip(frame.iloc[:, 0].str.strip(), frame.iloc[:, 1].str.strip(), strict=True))


@dataclass
class Evaluation:
    per_image: pd.DataFrame
    aggregate: dict[str, float]
    skipped_metrics: dict[str, str] = field(default_factory=dict)
    modality: dict = field(default_factory=dict)
    lengths: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "counts": self.counts,
            "metrics": self.aggregate,
            "skipped_metrics": self.skipped_metrics,
            "modality": self.modality,
            "lengths": self.lengths,
        }


def bleu_scores(references: list[str], candidates: list[str]) -> dict[str, list[float]]:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smoothing = SmoothingFunction().method1
    weights = {1: (1.0,), 2: (0.5, 0.5), 3: (1 / 3, 1 / 3, 1 / 3), 4: (0.25, 0.25, 0.25, 0.25)}
    scores: dict[str, list[float]] = {f"bleu{n}": [] for n in weights}
    for reference, candidate in zip(references, candidates, strict=True):
        for n, weight in weights.items():
            if not reference and not candidate:
                value = 1.0
            elif not reference or not candidate:
                value = 0.0
            else:
                value = sentence_bleu(
                    [reference.split()],
                    candidate.split(),
                    weights=weight,
                    smoothing_function=smoothing if n > 1 else None,
                )
            scores[f"bleu{n}"].append(float(value))
    return scores


def rouge_scores(references: list[str], candidates: list[str]) -> dict[str, list[float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    scores: dict[str, list[float]] = {"rouge1_f": [], "rougeL_f": []}
    for reference, candidate in zip(references, candidates, strict=True):
        if not reference and not candidate:
            scores["rouge1_f"].append(1.0)
            scores["rougeL_f"].append(1.0)
            continue
        result = scorer.score(reference, candidate)
        scores["rouge1_f"].append(result["rouge1"].fmeasure)
        scores["rougeL_f"].append(result["rougeL"].fmeasure)
    return scores


def _coco_inputs(references: list[str], candidates: list[str]):
    # pycocoevalcap wants non-empty strings; empty pairs are scored 1 outside it
    keep = [index for index, (r, c) in enumerate(zip(references, candidates, strict=True)) if r or c]
    gts = {index: [references[index] or "empty"] for index in keep}
    res = {index: [candidates[index] or "empty"] for index in keep}
    return keep, gts, res


def _spread(count: int, keep: list[int], values) -> list[float]:
    scores = [1.0] * count
    for index, value in zip(keep, values, strict=True):
        scores[index] = float(value)
    return scores


def cider_scores(references: list[str], candidates: list[str]) -> list[float]:
    from pycocoevalcap.cider.cider import Cider

    keep, gts, res = _coco_inputs(references, candidates)
    if not keep:
        return [1.0] * len(references)
    _, values = Cider().compute_score(gts, res)
    return _spread(len(references), keep, values)


def meteor_scores(references: list[str], candidates: list[str]) -> list[float]:
    from pycocoevalcap.meteor.meteor import Meteor

    keep, gts, res = _coco_inputs(references, candidates)
    if not keep:
        return [1.0] * len(references)
    scorer = Meteor()
    try:
        _, values = scorer.compute_score(gts, res)
    finally:
        scorer.close() if hasattr(scorer, "close") else None
    return _spread(len(references), keep, values)


def bertscore_f1(references: list[str], candidates: list[str]) -> list[float]:
    from bert_score import score  # optional extra

    _, _, f1 = score(
        candidates, references, model_type="microsoft/deberta-xlarge-mnli", lang="en", verbose=False
    )
    return [float(value) for value in f1]


def evaluate(
    frame: pd.DataFrame,
    references: pd.DataFrame | None = None,
    cuis: pd.DataFrame | None = None,
    with_bertscore: bool = True,
) -> Evaluation:
    """Score generated captions against references; add modality agreement and lengths."""
    frame = frame.drop_duplicates("image_id").copy()
    if references is not None and "caption" in references.columns:
        frame["reference"] = frame["image_id"].map(references["caption"])
    elif "original_caption" in frame.columns:
        frame["reference"] = frame["original_caption"]
    else:
        raise RococapError("no references: the CSV has no original_caption column; pass --references FILE")
    missing_reference = frame["reference"].isna()
    scored = frame[~missing_reference].copy()
    refs = [preprocess(text) for text in scored["reference"]]
    cands = [preprocess(text) for text in scored["generated_caption"]]
    metrics: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    metrics.update(bleu_scores(refs, cands))
    metrics.update(rouge_scores(refs, cands))
    metrics["cider"] = cider_scores(refs, cands)
    if shutil.which("java"):
        metrics["meteor"] = meteor_scores(refs, cands)
    else:
        skipped["meteor"] = "METEOR needs Java (pycocoevalcap runs meteor-1.5.jar): install a JRE"
    if with_bertscore:
        try:
            metrics["bertscore_f1"] = bertscore_f1(
                list(scored["reference"]), list(scored["generated_caption"])
            )
        except Exception as exc:  # missing package, or the model cannot be downloaded
            skipped["bertscore_f1"] = (
                f"BERTScore skipped ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                "install bert-score and make microsoft/deberta-xlarge-mnli available "
                "(HF_HOME) to compute it"
            )
    else:
        skipped["bertscore_f1"] = "BERTScore not requested"
    for name, values in metrics.items():
        scored[name] = values
    per_image = frame.merge(scored[["image_id", *metrics]], on="image_id", how="left")
    aggregate = {
        name: float(statistics.fmean(values)) if values else float("nan") for name, values in metrics.items()
    }
    evaluation = Evaluation(per_image=per_image, aggregate=aggregate, skipped_metrics=skipped)
    evaluation.counts = {
        "images": int(len(frame)),
        "scored": int(len(scored)),
        "missing_reference": int(missing_reference.sum()),
    }
    evaluation.lengths = length_statistics(frame)
    evaluation.modality = modality_agreement(per_image, cuis)
    return evaluation


def unknown_cuis(cuis: pd.DataFrame, names: dict[str, str]) -> dict[str, int]:
    """CUIs used by the images but missing from the name mapping, with how often they occur."""
    counter: Counter = Counter()
    for value in cuis["cui"].fillna(""):
        for cui in str(value).split(";"):
            if cui.strip() and cui.strip() not in names:
                counter[cui.strip()] += 1
    return dict(counter.most_common())


def _length_summary(texts: pd.Series) -> dict:
    chars = texts.fillna("").astype(str).str.len()
    words = texts.fillna("").astype(str).str.split().str.len()
    summary = {}
    for name, values in (("characters", chars), ("words", words)):
        summary[name] = (
            {
                "mean": float(values.mean()),
                "median": float(values.median()),
                "min": int(values.min()),
                "max": int(values.max()),
            }
            if len(values)
            else {}
        )
    return summary


def length_statistics(frame: pd.DataFrame) -> dict:
    result = {"generated": _length_summary(frame["generated_caption"])}
    if "reference" in frame.columns:
        result["reference"] = _length_summary(frame["reference"].dropna())
    return result


def modality_agreement(per_image: pd.DataFrame, cuis: pd.DataFrame | None) -> dict:
    """Gold modality from CUIs vs the modality named in the generated (and reference) caption."""
    if cuis is None or "cui" not in cuis.columns:
        per_image["gold_modality"] = NO_MODALITY
        per_image["generated_modality"] = per_image["generated_caption"].map(modality_of_caption)
        return {"available": False, "reason": "no CUIs: pass --cuis FILE (image_id,cui)"}
    per_image["gold_modality"] = per_image["image_id"].map(cuis["cui"]).map(modality_of_cuis)
    per_image["generated_modality"] = per_image["generated_caption"].map(modality_of_caption)
    per_image["reference_modality"] = per_image["reference"].fillna("").map(modality_of_caption)
    with_gold = per_image[per_image["gold_modality"] != NO_MODALITY]
    result = {"available": True, "images_with_gold_modality": int(len(with_gold))}
    for side in ("generated", "reference"):
        column = f"{side}_modality"
        correct = int((with_gold[column] == with_gold["gold_modality"]).sum())
        named = int((with_gold[column] != NO_MODALITY).sum())
        confusion = Counter(zip(with_gold["gold_modality"], with_gold[column], strict=True))
        result[side] = {
            "accuracy": correct / len(with_gold) if len(with_gold) else None,
            "correct": correct,
            "names_a_modality": named,
            "accuracy_where_named": correct / named if named else None,
            "confusion": {
                gold: {pred: confusion.get((gold, pred), 0) for pred in (*MODALITIES, NO_MODALITY)}
                for gold in MODALITIES
            },
        }
    return result
