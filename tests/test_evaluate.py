"""`rococap evaluate`: metrics equal the reference libraries, modality rules on real captions, the report."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rococap.evaluate import (
    evaluate,
    modality_of_caption,
    modality_of_cuis,
    preprocess,
    read_captions_csv,
    read_reference_csv,
)
from tests.conftest import SHARED_DATA, rococap_cli

VLM_CSV = SHARED_DATA / "vlm_outputs/qwen3vl4b_zeroshot_rocov2_test_first50.csv"
TEST_REFERENCES = SHARED_DATA / "rocov2/rocov2_test_image_id_caption_cui.csv"
CUI_MAP = SHARED_DATA / "rocov2/rocov2_cui_mapping.csv"
needs_shared = pytest.mark.skipif(not VLM_CSV.exists(), reason="../shared/data is not present")


def test_preprocessing_follows_imageclef():
    assert (
        preprocess("CT, Axial T2-weighted (3 mm), 12/04!")
        == "ct axial tnumberweighted number mm numbernumber"
    )
    assert preprocess("  ") == ""


@pytest.mark.shared_data
@needs_shared
def test_metrics_on_real_captions_equal_direct_library_calls():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer

    frame = read_captions_csv(VLM_CSV)
    result = evaluate(frame, with_bertscore=False)
    refs = [preprocess(text) for text in frame["original_caption"]]
    cands = [preprocess(text) for text in frame["generated_caption"]]
    pairs = list(zip(refs, cands, strict=True))
    bleu1 = np.mean([sentence_bleu([r.split()], c.split(), weights=(1.0,)) for r, c in pairs])
    bleu4 = np.mean(
        [
            sentence_bleu(
                [r.split()], c.split(), weights=(0.25,) * 4, smoothing_function=SmoothingFunction().method1
            )
            for r, c in pairs
        ]
    )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    rouge1 = np.mean([scorer.score(r, c)["rouge1"].fmeasure for r, c in pairs])
    rouge_l = np.mean([scorer.score(r, c)["rougeL"].fmeasure for r, c in pairs])
    cider, _ = Cider().compute_score(
        {i: [r] for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(cands)}
    )
    assert result.aggregate["bleu1"] == pytest.approx(bleu1, abs=1e-12)
    assert result.aggregate["bleu4"] == pytest.approx(bleu4, abs=1e-12)
    assert result.aggregate["rouge1_f"] == pytest.approx(rouge1, abs=1e-12)
    assert result.aggregate["rougeL_f"] == pytest.approx(rouge_l, abs=1e-12)
    assert result.aggregate["cider"] == pytest.approx(cider, abs=1e-9)
    assert 0 < result.aggregate["bleu1"] < 1 and result.counts == {
        "images": 50,
        "scored": 50,
        "missing_reference": 0,
    }
    if shutil.which("java"):
        assert 0 < result.aggregate["meteor"] < 1
    else:
        assert "Java" in result.skipped_metrics["meteor"]


@pytest.mark.shared_data
@needs_shared
def test_modality_rules_agree_with_the_cuis_of_the_real_test_split():
    """Measured on the 9,927 test captions: 74.5% of images with a modality CUI have a caption that
    names the same modality; 24% of captions name none. Where a caption names one, it agrees 98.1%.
    The floors leave two points of room for rule changes, no more."""
    references = read_reference_csv(TEST_REFERENCES).reset_index()
    gold = references["cui"].map(modality_of_cuis)
    named = references["caption"].map(modality_of_caption)
    with_gold = gold != "none"
    assert with_gold.sum() >= 9800
    assert (gold[with_gold] == named[with_gold]).mean() >= 0.72
    names_one = with_gold & (named != "none")
    assert (gold[names_one] == named[names_one]).mean() >= 0.96


@pytest.mark.parametrize(
    ("caption", "modality"),
    [
        ("Axial CT of the chest", "CT"),
        ("T2-weighted MRI of the brain", "MRI"),
        ("Chest X-ray PA view", "X-ray"),
        ("Abdominal ultrasound shows", "Ultrasound"),
        ("Digital subtraction angiography", "Angiography"),
        ("FDG PET/CT", "PET"),
        ("CT angiography of the aorta", "CT"),
        ("Photo of the lesion", "none"),
    ],
)
def test_modality_keyword_rules(caption, modality):
    assert modality_of_caption(caption) == modality


def test_unknown_and_missing_cuis_have_no_modality():
    assert modality_of_cuis("C1266909;C0040405") == "CT"
    assert modality_of_cuis("C1266909") == "none"
    assert modality_of_cuis(None) == "none" and modality_of_cuis("") == "none"


def test_edge_cases_empty_captions_missing_references_unfinished_csv(tmp_path):
    path = tmp_path / "medical_captions_test.csv"
    path.write_text(
        "image_id,original_caption,generated_caption,processing_time_sec,model,timestamp,split\n"
        "a,,,0.1,m,t,test\n"
        "b,CT of the chest,,0.1,m,t,test\n"
        "c,CT of the chest,CT of the chest,0.1,m,t,test\n"
        "d,MRI,MRI of the brain,0.1,m,t,test\n"
        'e,"torn row, never finish'
    )
    frame = read_captions_csv(path)
    assert frame["image_id"].tolist() == ["a", "b", "c", "d"]
    references = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "caption": ["", "CT of the chest", "CT of the chest"],
            "cui": ["C0040405", "C1266909", "C0040405"],
        }
    ).set_index("image_id")
    result = evaluate(frame, references, references, with_bertscore=False)
    scores = result.per_image.set_index("image_id")
    assert (
        scores.loc["a", "bleu1"] == 1.0
        and scores.loc["a", "rouge1_f"] == 1.0
        and scores.loc["a", "cider"] == 1.0
    )
    assert scores.loc["b", "bleu1"] == 0.0 and scores.loc["b", "rougeL_f"] == 0.0
    assert scores.loc["c", "bleu1"] == pytest.approx(1.0) and scores.loc["c", "rouge1_f"] == pytest.approx(
        1.0
    )
    assert pd.isna(scores.loc["d", "bleu1"])
    assert result.counts == {"images": 4, "scored": 3, "missing_reference": 1}
    assert result.modality["images_with_gold_modality"] == 2  # b's only CUI is unknown
    assert result.modality["generated"]["correct"] == 1


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_report_from_a_real_run_opens_in_headless_chromium(tiny_model, rocov2_folder, tmp_path):
    result = rococap_cli(
        "run",
        "test",
        "--dataset",
        str(rocov2_folder),
        "--model",
        str(tiny_model),
        "--limit",
        "6",
        "--out",
        str(tmp_path / "out"),
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    csv_path = tmp_path / "out/test/medical_captions_test.csv"
    evaluated = rococap_cli(
        "evaluate",
        str(csv_path),
        "--dataset",
        str(rocov2_folder),
        "--no-bertscore",
        *(["--cui-map", str(CUI_MAP)] if CUI_MAP.exists() else []),
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = tmp_path / "out/test/report"
    assert {
        "metrics.json",
        "report.html",
        "lengths.png",
        "time_per_image.png",
        "modality_confusion.png",
        "per_image.csv",
    } <= {path.name for path in report.iterdir()}
    page = (report / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 6  # one thumbnail per image, inlined
    assert "http://" not in page and "https://" not in page  # works offline

    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run must install it")
        pytest.skip("chromium is not installed here (apt-get install chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1400,1000",
    ]
    url = (report / "report.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="1"' in dom.stdout, "the page's script did not run to the end"
    assert "6 of 6 images" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=90, check=True
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1000, 1400) and pixels.std() > 20  # a rendered page, not a blank one
