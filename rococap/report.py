"""The evaluation report: metrics.json, PNG plots and one self-contained, offline HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import pandas as pd

from rococap.evaluate import MODALITIES, NO_MODALITY, Evaluation
from rococap.output import atomic_write_text

THUMBNAIL_SIDE_PX = 160
SCORE_COLUMNS = ("bleu1", "bleu4", "rouge1_f", "rougeL_f", "meteor", "cider", "bertscore_f1")


def write_report(
    evaluation: Evaluation, folder: str | Path, title: str, thumbnails: dict[str, bytes]
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        folder / "metrics.json", json.dumps(evaluation.to_json(), indent=2, sort_keys=True) + "\n"
    )
    evaluation.per_image.to_csv(folder / "per_image.csv", index=False)
    plots = {
        "lengths.png": plot_lengths(evaluation.per_image),
        "time_per_image.png": plot_times(evaluation.per_image),
    }
    if evaluation.modality.get("available"):
        plots["modality_confusion.png"] = plot_confusion(evaluation.modality["generated"]["confusion"])
    for name, png in plots.items():
        if png:
            (folder / name).write_bytes(png)
    page = render_html(evaluation, title, thumbnails, {name: png for name, png in plots.items() if png})
    atomic_write_text(folder / "report.html", page)
    return folder / "report.html"


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def plot_lengths(per_image: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.6))
    generated = per_image["generated_caption"].fillna("").str.split().str.len()
    bins = 30
    if "reference" in per_image:
        reference = per_image["reference"].dropna().str.split().str.len()
        axis.hist(reference, bins=bins, alpha=0.6, label="reference", color="#4c78a8")
    axis.hist(generated, bins=bins, alpha=0.6, label="generated", color="#f58518")
    axis.set_xlabel("words per caption")
    axis.set_ylabel("images")
    axis.legend()
    axis.set_title("Caption length")
    return _figure_png(figure)


def plot_times(per_image: pd.DataFrame) -> bytes | None:
    if "processing_time_sec" not in per_image:
        return None
    times = pd.to_numeric(per_image["processing_time_sec"], errors="coerce").dropna()
    if times.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.6))
    axis.hist(times, bins=30, color="#54a24b")
    axis.set_xlabel("seconds per image (share of its batch)")
    axis.set_ylabel("images")
    axis.set_title("Time per image")
    return _figure_png(figure)


def plot_confusion(confusion: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = [*MODALITIES, NO_MODALITY]
    matrix = [[confusion[gold][name] for name in predicted] for gold in MODALITIES]
    figure, axis = plt.subplots(figsize=(6.5, 5))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(predicted)), predicted, rotation=40, ha="right")
    axis.set_yticks(range(len(MODALITIES)), MODALITIES)
    axis.set_xlabel("modality named in the generated caption")
    axis.set_ylabel("modality from the image's CUIs")
    peak = max((value for row in matrix for value in row), default=0)
    for row_index, row in enumerate(matrix):
        for column_index, value in enumerate(row):
            color = "white" if peak and value > peak / 2 else "black"
            axis.text(column_index, row_index, str(value), ha="center", va="center", color=color, fontsize=9)
    axis.set_title("Modality agreement")
    return _figure_png(figure)


def thumbnail_data_uri(image_bytes: bytes | None) -> str | None:
    from PIL import Image

    from rococap.errors import ImageError
    from rococap.images import decode_image, to_rgb

    try:
        image = to_rgb(decode_image(image_bytes))
    except ImageError:
        return None
    image.thumbnail((THUMBNAIL_SIDE_PX, THUMBNAIL_SIDE_PX), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


PAGE_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.8}main{padding:20px 28px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:18px}
.card{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 3px rgba(0,0,0,.08);min-width:110px}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#5b6673;text-transform:uppercase}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots img{background:#fff;border-radius:8px;max-width:460px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.controls{margin:18px 0 8px;display:flex;gap:10px;align-items:center}
.controls input,.controls select{padding:6px 8px;border:1px solid #c8ced6;border-radius:6px;font-size:14px}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 3px rgba(0,0,0,.08);font-size:13px}
th{position:sticky;top:0;background:#e8ecf1;cursor:pointer;text-align:left;padding:8px;user-select:none}
th.sorted-asc:after{content:" \\25B2"}th.sorted-desc:after{content:" \\25BC"}
td{padding:8px;border-top:1px solid #edf0f3;vertical-align:top}td.caption{max-width:380px}
td.num{text-align:right;font-variant-numeric:tabular-nums}img.thumb{border-radius:4px;display:block}
.muted{color:#8a94a0}.skipped{font-size:13px;color:#8a5a00}
"""

PAGE_SCRIPT = """
(function(){
  var table=document.getElementById('captions');var body=table.tBodies[0];
  var rows=Array.prototype.slice.call(body.rows);
  var search=document.getElementById('search');var modality=document.getElementById('modality');
  var shown=document.getElementById('shown');
  function apply(){
    var q=search.value.toLowerCase();var m=modality.value;var count=0;
    rows.forEach(function(r){
      var ok=(!q||r.textContent.toLowerCase().indexOf(q)>=0)&&(!m||r.getAttribute('data-gold')===m);
      r.style.display=ok?'':'none';if(ok){count++;}
    });
    shown.textContent=count+' of '+rows.length+' images';
  }
  search.addEventListener('input',apply);modality.addEventListener('change',apply);
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('sorted-asc');
      Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc?'sorted-asc':'sorted-desc');
      var numeric=th.getAttribute('data-type')==='num';
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-value')||a.cells[i].textContent;
        var y=b.cells[i].getAttribute('data-value')||b.cells[i].textContent;
        if(numeric){x=parseFloat(x);y=parseFloat(y);x=isNaN(x)?-1:x;y=isNaN(y)?-1:y;return asc?x-y:y-x;}
        return asc?x.localeCompare(y):y.localeCompare(x);
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  apply();
  document.body.setAttribute('data-ready','1');
})();
"""


def render_html(
    evaluation: Evaluation, title: str, thumbnails: dict[str, bytes], plots: dict[str, bytes]
) -> str:
    per_image = evaluation.per_image
    scores = [name for name in SCORE_COLUMNS if name in per_image.columns]
    cards = "".join(
        f'<div class="card"><span>{html.escape(name)}</span><b>{_fmt(value)}</b></div>'
        for name, value in evaluation.aggregate.items()
    )
    modality = evaluation.modality
    if modality.get("available"):
        for side in ("generated", "reference"):
            cards += (
                f'<div class="card"><span>modality agreement ({side})</span>'
                f"<b>{_fmt(modality[side]['accuracy'])}</b></div>"
            )
    skipped = "".join(
        f"<p class=skipped>{html.escape(reason)}</p>"
        for reason in evaluation.skipped_metrics.values()
        if "not requested" not in reason
    )
    plot_tags = "".join(
        f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for name, png in plots.items()
    )
    header_cells = [
        '<th data-type="text">image</th>',
        '<th data-type="text">image id</th>',
        '<th data-type="text">reference caption</th>',
        '<th data-type="text">generated caption</th>',
        '<th data-type="text">modality (CUI / generated)</th>',
    ]
    header_cells += [f'<th data-type="num">{html.escape(name)}</th>' for name in scores]
    body_rows = []
    for record in per_image.to_dict("records"):
        image_id = str(record["image_id"])
        uri = thumbnail_data_uri(thumbnails.get(image_id)) if image_id in thumbnails else None
        thumb = (
            f'<img class="thumb" loading="lazy" alt="" src="{uri}">'
            if uri
            else '<span class="muted">-</span>'
        )
        gold = str(record.get("gold_modality", NO_MODALITY))
        cells = [
            f"<td>{thumb}</td>",
            f"<td>{html.escape(image_id)}</td>",
            f'<td class="caption">{_fmt(record.get("reference") if isinstance(record.get("reference"), str) else "")}</td>',
            f'<td class="caption">{_fmt(record.get("generated_caption", ""))}</td>',
            f"<td>{html.escape(gold)} / {html.escape(str(record.get('generated_modality', '')))}</td>",
        ]
        for name in scores:
            value = record.get(name)
            number = (
                "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"
            )
            cells.append(f'<td class="num" data-value="{number}">{_fmt(value)}</td>')
        body_rows.append(f'<tr data-gold="{html.escape(gold)}">{"".join(cells)}</tr>')
    options = "".join(f'<option value="{name}">{name}</option>' for name in (*MODALITIES, NO_MODALITY))
    counts = evaluation.counts
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>
<body><header><h1>{html.escape(title)}</h1>
<p>{counts.get("images", 0)} images, {counts.get("scored", 0)} scored against a reference,
{counts.get("missing_reference", 0)} without one. Captions preprocessed as in ImageCLEFmedical.</p></header>
<main><section class="cards">{cards}</section>{skipped}
<section class="plots">{plot_tags}</section>
<div class="controls"><input id="search" type="search" placeholder="Filter by id or caption text">
<select id="modality"><option value="">every modality (CUI)</option>{options}</select>
<span id="shown" class="muted"></span></div>
<table id="captions"><thead><tr>{"".join(header_cells)}</tr></thead><tbody>{"".join(body_rows)}</tbody></table>
</main><script>{PAGE_SCRIPT}</script></body></html>
"""
