"""``bgbias report`` on eval-detect JSON: a detection section with AP per background, drops per category, boxes."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bgbias.cli import main as cli_main
from bgbias.detect.build import DetBuildConfig, build_detection
from bgbias.detect.data import create_det_source
from bgbias.detect.evaluate import evaluate_detection

ROOT = Path(__file__).resolve().parents[1]


def _results(build: Path, name: str, dx: float) -> list[dict]:
    anns = json.loads((build / name / "val" / "annotations.json").read_text())["annotations"]
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "bbox": [a["bbox"][0] + dx, a["bbox"][1], a["bbox"][2], a["bbox"][3]]} for a in anns]


@pytest.fixture(scope="module")
def det_eval(tmp_path_factory):
    """A small build and one eval-detect JSON from predictions: exact on original, shifted on red, one FP on Only-BG."""
    root = tmp_path_factory.mktemp("repdet")
    build = root / "build"
    build_detection(create_det_source("digits-det:16"), build, DetBuildConfig(("original", "color:red", "only_bg")))
    preds = root / "preds"
    preds.mkdir()
    (preds / "original.json").write_text(json.dumps(_results(build, "original", 0.0)))
    (preds / "color_red.json").write_text(json.dumps(_results(build, "color_red", 3.0)))
    iid = json.loads((build / "only_bg" / "val" / "annotations.json").read_text())["images"][0]["id"]
    (preds / "only_bg.json").write_text(json.dumps([{"image_id": iid, "category_id": 1, "score": 0.9,
                                                     "bbox": [1, 1, 5, 5]}]))
    result = evaluate_detection(build, predictions=preds, bootstrap=10)
    result["model"] = {"spec": "module:my.det:<b>evil</b>"}
    path = root / "det_eval.json"
    path.write_text(json.dumps(result))
    return root, path, result


def test_report_shows_the_detection_section(det_eval, capsys):
    root, path, result = det_eval
    out = root / "out" / "report.html"
    assert cli_main(["report", str(path), "--out", str(out), "--figures", str(root / "figs")]) == 0
    printed = capsys.readouterr().out
    assert "detection AP 1.000 on original" in printed
    page = out.read_text()
    section = page.split('<section id="detection">', 1)[1].split("</section>", 1)[0]
    assert "No eval-detect JSON" not in section
    for key in ("detection_ap", "detection_drop_0", "detection_examples_0"):
        assert f'data-figure="{key}"' in section
        assert (root / "figs" / f"{key}.png").read_bytes()[:4] == b"\x89PNG"
    ci = result["variants"]["color:red"]["intervals"]["AP"]
    ap = result["variants"]["color:red"]["metrics"]["AP"]
    assert f"{ap:.3f} <span class=\"ci\">[{ci[0]:.3f}, {ci[1]:.3f}]</span>" in section
    assert f"{ap - 1.0:+.3f}" in section                         # the drop against original
    assert "FP/img" in section                                     # Only-BG has no ground truth
    assert "&lt;b&gt;evil&lt;/b&gt;" in page and "<b>evil</b>" not in page
    cats = list(result["variants"]["original"]["per_category"])
    assert all(re.search(rf"<td>{re.escape(c)}</td>", section) for c in cats)
    saved = json.loads((root / "out" / "results.json").read_text())
    det = saved["detection"]["module:my.det:<b>evil</b>"]
    assert det["variants"]["color:red"]["intervals"]["AP"] == ci


def test_classification_report_says_detection_is_missing(det_eval, tmp_path):
    from bgbias.report.write import write_report

    ev = {"kind": "bgbias-eval/1", "model": "m", "classes": ["a"], "variants": {"original": {"accuracy": 0.5}}}
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    write_report([tmp_path / "eval.json"], tmp_path / "r.html")
    assert "No eval-detect JSON in the inputs" in (tmp_path / "r.html").read_text()


def test_report_does_not_import_torch():
    code = "import sys, bgbias.report.write, bgbias.report.detection; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"
