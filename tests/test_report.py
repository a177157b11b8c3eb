"""Tests for bgbias.report.write / bgbias.report.figures: hand-written result files that follow docs/ARCHITECTURE.md exactly."""
from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgbias.cli import main as cli_main
from bgbias.core.io import write_json, write_png
from bgbias.core.layout import class_dirname
from bgbias.report.inputs import load_inputs
from bgbias.report.page import SECTIONS
from bgbias.report.write import write_report

EVIL = "<script>alert(1)</script>"
CLASSES = ["zero", EVIL, "two"]
VARIANTS = ["original", "only_bg_b", "only_bg_t", "no_fg", "only_fg", "mixed_same", "mixed_rand", "mixed_next",
            "color:red", "texture:stripes:4"]


def _dirname(v: str) -> str:
    return v.replace(":", "_")


def _groups(acc: float, backgrounds: list[str]) -> dict:
    """eval.json's ``groups`` of one variant (the shape bgbias.audit.groups.group_accuracy writes); the worst
    eligible group is (EVIL class, last background), and one group is too small to be eligible."""
    per = {f"{c}|{b}": {"accuracy": acc, "n": 5, "eligible": True} for c in CLASSES for b in backgrounds}
    per[f"{EVIL}|{backgrounds[-1]}"] = {"accuracy": acc - 0.4, "n": 5, "eligible": True}
    per[f"two|{backgrounds[0]}"] = {"accuracy": 0.0, "n": 1, "eligible": False}
    return {"n_groups": len(per), "min_count": 3, "eligible": len(per) - 1, "worst_group": f"{EVIL}|{backgrounds[-1]}",
            "worst_group_accuracy": acc - 0.4, "ci95": [acc - 0.5, acc - 0.3], "too_small": False,
            "mean_group_accuracy": acc - 0.05, "weighted_accuracy": acc - 0.02, "weighted_by": "training",
            "per_group": per}


def _eval(model: str, accs: dict[str, float], seen: set[str], families: list[str], build: Path) -> dict:
    variants = {v: {"accuracy": a, "ci95": [max(a - 0.05, 0), min(a + 0.05, 1)], "n": 6, "correct": round(6 * a),
                    "per_class": {c: {"accuracy": a, "n": 2} for c in CLASSES},
                    "confusion": [[2, 0, 0], [0, 2, 0], [0, 0, 2]], "seen_in_training": v in seen,
                    "outside_map": [0, 0, 0]}
                for v, a in accs.items()}
    variants["original"]["groups"] = _groups(accs["original"], ["color:red", f"photos:{EVIL}"])
    variants["mixed_rand"]["groups"] = _groups(accs["mixed_rand"], CLASSES)
    variants["mixed_same"]["groups"] = _groups(accs["mixed_same"], ["zero"])   # one background: no heatmap
    gap = accs["mixed_same"] - accs["mixed_rand"]
    return {"kind": "bgbias-eval/1", "model": model, "data": str(build), "config": {"batch_size": 8},
            "classes": CLASSES, "variants": variants, "bg_gap": {"value": gap, "ci95": [gap - 0.04, gap + 0.04]},
            "signal_groups": {"counts": {"fg+bg+": 2, "fg+bg-": 1, "fg-bg+": 2, "fg-bg-": 1},
                              "per_class": {c: {"fg+bg+": 1} for c in CLASSES}},
            "families_seen": families,
            "skipped": [{"path": f"{build}/original/val/x/{EVIL}.png", "reason": "unreadable image"}]}


def _challenge(model: str, acc: float, build: Path) -> dict:
    return {"kind": "bgbias-challenge/1", "model": model, "data": str(build), "config": {}, "classes": CLASSES,
            "challenge_accuracy": acc, "exhaustive": True, "n_foregrounds": 6, "n_backgrounds": 6,
            "clean_accuracy": 1.0, "per_class": {c: {"challenge_accuracy": acc, "n": 2} for c in CLASSES},
            "fooled": [{"id": "s0", "label": 0, "background": "s3", "background_class": 1, "predicted": 1}],
            "top_fooling": {EVIL: [{"background": "s4", "fool_rate": 0.75, "n_tested": 4}],
                            "two": [{"background": "s5", "fool_rate": 0.25, "n_tested": 4},
                                    {"background": "s0", "fool_rate": 0.5, "n_tested": 4}]},
            "forwards": 20, "exhaustive_forwards": 36, "seconds": 0.1}


def write_fixture(root: Path) -> list[Path]:
    """A 3-class, 6-image build plus eval/challenge/saliency/metrics for two models; returns the JSON paths."""
    build = root / "build"
    rng = np.random.default_rng(0)
    samples = []
    for i in range(6):
        label = i % 3
        cdir = class_dirname(label, CLASSES[label], 3)
        samples.append({"id": f"s{i}", "label": label, "class_dir": cdir})
        mask = np.zeros((16, 16), np.float32)
        mask[4:12, 5:11] = 1
        (build / "fg_mask" / "val" / cdir).mkdir(parents=True, exist_ok=True)
        np.save(build / "fg_mask" / "val" / cdir / f"s{i}.npy", mask)
        for v in VARIANTS:
            write_png(build / _dirname(v) / "val" / cdir / f"s{i}.png", rng.integers(0, 255, (16, 16, 3), np.uint8))
    write_json(build / "manifest.json", {
        "tool": "bgbias", "version": "0.1.0", "source": {"spec": "digits"}, "seed": 0, "config": {}, "classes": CLASSES,
        "variants": {v: {"name": v, "dirname": _dirname(v), "count": 6} for v in VARIANTS}, "samples": samples,
        "pairing": {}, "dropped": [{"id": "bad", "reason": "mask is empty", "stage": "mask"}],
        "counts": {"kept": 6, "dropped": 1, "by_reason": {"mask is empty": 1}}})
    paths = [build / "manifest.json"]
    base_accs = {v: 0.9 for v in VARIANTS} | {"mixed_same": 0.95, "mixed_rand": 0.55, "only_bg_t": 0.6}
    mit_accs = {v: 0.9 for v in VARIANTS} | {"mixed_same": 0.9, "mixed_rand": 0.85, "only_bg_t": 0.35}
    for name, accs, seen, fams, ch in (("base", base_accs, set(), [], 0.2),
                                       ("aug", mit_accs, {"color:red"}, ["color"], 0.6)):
        run = root / "runs" / name
        model = f"checkpoint:{run / 'model.pt'}"
        write_json(run / "metrics.json", {
            "kind": "bgbias-train/1", "recipe": "baseline" if name == "base" else "bg-augment", "arch": "small-cnn",
            "classes": CLASSES, "families_seen": fams, "config": {"epochs": 2, "note": EVIL},
            "history": [{"epoch": 1, "loss": 0.5, "train_accuracy": 0.8, "seconds": 1.0}],
            "final": {"train_accuracy": 0.8}})
        write_json(run / "eval.json", _eval(model, accs, seen, fams, build))
        write_json(run / "challenge.json", _challenge(model, ch, build))
        overlays = []
        for v in ("original", "mixed_rand"):
            for sid in ("s0", "s1"):
                rel = f"overlays/gradcam/{v}/{sid}.png"
                write_png(run / rel, rng.integers(0, 255, (16, 16, 3), np.uint8))
                overlays.append({"method": "gradcam", "variant": v, "id": sid, "label": 0, "fg_share": 0.7,
                                 "path": rel})
        overlays.append({"method": "gradcam", "variant": "original", "id": "evil", "label": 0, "fg_share": 0.1,
                         "path": "../../../../etc/passwd"})
        write_json(run / "saliency.json", {
            "kind": "bgbias-saliency/1", "model": model, "data": str(build), "classes": CLASSES,
            "config": {"top_percent": 20.0},
            "methods": {"gradcam": {"original": {
                "fg_share": 0.71, "fg_area": 0.3, "per_class": {EVIL: 0.7}, "n": 6,
                "relevance_rank_accuracy": 0.523, "pointing_game": 0.834, "iou_top": 0.412,
                "chance": {"fg_share": 0.3, "relevance_rank_accuracy": 0.3, "pointing_game": 0.3, "iou_top": 0.2},
                "ci95": {"fg_share": [0.6, 0.8], "relevance_rank_accuracy": [0.45, 0.6], "pointing_game": [0.6, 1.0],
                         "iou_top": [0.35, 0.47]},
                "per_class_metrics": {EVIL: {"fg_share": 0.7, "relevance_rank_accuracy": 0.567,
                                             "pointing_game": 1.0, "iou_top": 0.389, "n": 2}}}},
                        "input_grad": {"mixed_rand": {"fg_share": 0.5, "fg_area": 0.3, "per_class": {}, "n": 6}}},
            "overlays": overlays})
        paths += [run / f for f in ("eval.json", "challenge.json", "saliency.json", "metrics.json")]
    return paths


class _Collect(HTMLParser):
    """Collects ids, img sources and script tags, and checks tags close in order."""

    VOID = {"meta", "link", "img", "br", "hr", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.ids, self.imgs, self.scripts, self.stack, self.errors = set(), [], 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        self.scripts += tag == "script"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    paths = write_fixture(root)
    out = root / "out" / "report.html"
    results = write_report(paths, out, figures_dir=root / "figs", title=f"Report {EVIL}")
    return root, out, results


def test_page_is_valid_and_complete(report):
    root, out, results = report
    text = out.read_text("utf-8")
    p = _Collect()
    p.feed(text)
    p.close()
    assert not p.errors and not p.stack, p.errors or p.stack
    assert {sid for sid, _ in SECTIONS} <= p.ids
    assert p.scripts == 0
    # summary, accuracy, examples, fooling, saliency, signal groups, 2 x 2 group heatmaps: drawn, embedded, decodable
    assert len(p.imgs) == 10
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r"""(src|href)=["'](https?:|//)""", text), "page must not load anything from the network"


def test_user_text_is_escaped(report):
    _, out, _ = report
    text = out.read_text("utf-8")
    assert EVIL not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_summary_sentences_and_results(report):
    root, out, results = report
    assert (out.parent / "results.json").is_file()
    on_disk = json.loads((out.parent / "results.json").read_text())
    assert on_disk["kind"] == "bgbias-report/1"
    names = [m["name"] for m in on_disk["models"]]
    assert names == ["baseline", "bg-augment"]            # named by the recipe of the metrics.json next to them
    base, aug = on_disk["models"]
    assert base["bg_gap"]["value"] == pytest.approx(0.40) and aug["bg_gap"]["value"] == pytest.approx(0.05)
    assert "BG-gap +40.0 points" in base["summary"] and "challenge accuracy 20%" in base["summary"]
    assert aug["variants"]["color:red"]["seen_in_training"] and not base["variants"]["color:red"]["seen_in_training"]
    assert aug["variants"]["texture:stripes:4"]["name"] == "texture:stripes:4"  # keyed by canonical names
    assert aug["top_fooling"][0] == {"class": EVIL, "background": "s4", "fool_rate": 0.75, "n_tested": 4}
    text = out.read_text("utf-8")
    assert text.index('id="summary"') < text.index('id="accuracy"')
    assert "BG-gap <strong>+40.0 points</strong>" in text
    assert text.count("&dagger;") >= 2                  # legend + the seen colour variant of bg-augment


def test_older_results_keyed_by_folder_read_like_canonical_ones(tmp_path):
    """eval.json / saliency.json written before canonical keys (``color_red``) give the same report."""
    paths = write_fixture(tmp_path)
    new = write_report(paths, tmp_path / "new" / "report.html")
    for p in paths:
        doc = json.loads(p.read_text())
        if doc.get("kind") == "bgbias-eval/1":
            doc["variants"] = {_dirname(k): v for k, v in doc["variants"].items()}
        elif doc.get("kind") == "bgbias-saliency/1":
            doc["methods"] = {m: {_dirname(k): v for k, v in per.items()} for m, per in doc["methods"].items()}
            for o in doc["overlays"]:
                o["variant"] = _dirname(o["variant"])
        write_json(p, doc)
    assert "color_red" in json.loads((tmp_path / "runs" / "aug" / "eval.json").read_text())["variants"]
    old = write_report(paths, tmp_path / "old" / "report.html")
    assert old["models"] == new["models"] and "color:red" in old["models"][1]["variants"]
    assert (tmp_path / "old" / "report.html").read_bytes() == (tmp_path / "new" / "report.html").read_bytes()
    # without the manifest among the inputs, the data folder's manifest maps the folders
    old_no_manifest = write_report(paths[1:], tmp_path / "old2" / "report.html")
    assert set(old_no_manifest["models"][1]["variants"]) == set(new["models"][1]["variants"])


def _section(text: str, sid: str) -> str:
    start = text.index(f'<section id="{sid}">')
    return text[start:text.index("</section>", start)]


def test_groups_section_shows_worst_group_beside_accuracy_and_heatmaps(report):
    _, out, results = report
    text = out.read_text("utf-8")
    sec = _section(text, "groups")
    assert "worst-group accuracy" in sec and "weighted (training)" in sec
    evil = "&lt;script&gt;alert(1)&lt;/script&gt;"
    # baseline on original: accuracy 90.0 [85.0, 95.0] next to worst group 50.0 [40.0, 60.0], its name escaped
    row = sec[sec.index("<tr><td>baseline</td><td><code>original</code>"):]
    row = row[:row.index("</tr>")]
    assert "90.0 <span" in row and "[85.0, 95.0]" in row and "50.0 <span" in row and "[40.0, 60.0]" in row
    assert f"<code>{evil}|photos:{evil}</code>" in row and ">85.0</td>" in row and ">88.0</td>" in row
    assert ">5 of 6</td>" in row                    # one group too small to be eligible
    # heatmaps: original and mixed_rand per model (class x background), not mixed_same's single background
    assert [sec.count(f'data-figure="groups_{k}"') for k in range(1, 6)] == [1, 1, 1, 1, 0]
    assert "<h3>baseline: <code>original</code></h3>" in sec and "<h3>bg-augment: <code>mixed_rand</code></h3>" in sec
    assert "<code>mixed_same</code></h3>" not in sec
    # the accuracy table keeps its worst-group rows
    assert "worst group, <code>mixed_rand</code>" in _section(text, "accuracy")
    base = results["models"][0]["variants"]
    assert base["original"]["worst_group"] == f"{EVIL}|photos:{EVIL}"
    assert base["original"]["worst_group_accuracy"] == pytest.approx(0.5)
    assert base["original"]["worst_group_ci95"] == pytest.approx([0.4, 0.6]) and "worst_group" not in base["only_fg"]


def test_saliency_section_shows_localisation_metrics(report):
    _, out, results = report
    sec = _section(out.read_text("utf-8"), "saliency")
    for head in ("relevance mass", "rank accuracy", "pointing game", "top-20% IoU"):
        assert f"<th class=\"n\">{head}</th>" in sec, head
    row = sec[sec.index("<tr><td>baseline</td><td>gradcam</td><td><code>original</code>"):]
    row = row[:row.index("</tr>")]
    for value, ci, chance in (("71.0", "[60.0, 80.0]", "30.0"), ("52.3", "[45.0, 60.0]", "30.0"),
                              ("83.4", "[60.0, 100.0]", "30.0"), ("41.2", "[35.0, 47.0]", "20.0")):
        assert f"{value} <span class=\"ci\">{ci}</span> <span class=\"ci\">chance {chance}</span>" in row, value
    # per class, in a details block: the escaped class name, each metric
    per = sec[sec.index("<summary>per class</summary>"):]
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in per
    assert all(f">{x}</td>" in per for x in ("70.0", "56.7", "100.0", "38.9"))
    # an older saliency.json (foreground share only) still fills its row, the rest as dashes
    other = sec[sec.index("<tr><td>baseline</td><td>input_grad</td>"):]
    assert "50.0 <span class=\"ci\">chance 30.0</span>" in other[:other.index("</tr>")]
    loc = results["models"][0]["localisation"]["gradcam"]["original"]
    assert loc == {"fg_share": 0.71, "relevance_rank_accuracy": 0.523, "pointing_game": 0.834, "iou_top": 0.412}


def test_figures_saved_for_readme(report):
    root, _, _ = report
    stems = sorted(p.stem for p in (root / "figs").glob("*.png"))
    assert stems == ["accuracy", "examples", "fooling", "groups_1", "groups_2", "groups_3", "groups_4", "saliency",
                     "signal_groups", "summary"]


def test_path_outside_the_run_folder_is_not_read(tmp_path):
    from bgbias.report.figures import image_at

    secret = tmp_path / "secret.png"
    write_png(secret, np.full((4, 4, 3), 7, np.uint8))
    (tmp_path / "run").mkdir()
    assert image_at(tmp_path, "secret.png") is not None
    assert image_at(tmp_path / "run", "../secret.png") is None


def test_eval_only_report_shows_what_is_missing(tmp_path):
    paths = write_fixture(tmp_path)
    out = tmp_path / "only.html"
    results = write_report([paths[1]], out)
    text = out.read_text("utf-8")
    assert len(results["models"]) == 1 and results["models"][0]["challenge"] is None
    assert "Run <code>bgbias challenge</code>" in text
    assert "No build folder" not in text                  # found through eval.json's data field


def test_deterministic_bytes(tmp_path):
    paths = write_fixture(tmp_path)
    write_report(paths, tmp_path / "a.html", results_path=tmp_path / "a.json")
    write_report(paths, tmp_path / "b.html", results_path=tmp_path / "b.json")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


def test_bad_inputs(tmp_path):
    paths = write_fixture(tmp_path)
    (tmp_path / "other.json").write_text('{"kind": "something-else/1"}')
    with pytest.raises(ValueError, match="not a bgbias result file"):
        write_report([tmp_path / "other.json"], tmp_path / "r.html")
    with pytest.raises(ValueError, match="does not exist"):
        write_report([tmp_path / "nope.json"], tmp_path / "r.html")
    with pytest.raises(ValueError, match="should end in .html"):
        write_report(paths, tmp_path / "r.txt")
    with pytest.raises(ValueError, match="give one name per model"):
        write_report(paths, tmp_path / "r.html", names=["just-one"])


def test_cli(tmp_path, capsys):
    paths = write_fixture(tmp_path)
    out = tmp_path / "cli" / "report.html"
    rc = cli_main(["report", *map(str, paths), "--out", str(out), "--names", "plain,augmented"])
    assert rc == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert str(out) in printed and "plain: BG-gap" in printed
    assert cli_main(["report", str(tmp_path / "missing.json"), "--out", str(out)]) == 2


def test_thumbnails_are_found(tmp_path):
    """Fooling backgrounds (best per class) are found in their class folder or by id; overlays next to saliency.json."""
    from bgbias.report.figures import fooling_rows, image_at, saliency_rows

    inputs = load_inputs(write_fixture(tmp_path))
    fool = fooling_rows(inputs)
    assert [[c for _, _, c in files] for _, files in fool] == [[f"{EVIL}\n75%", "two\n50%"]] * 2
    assert fool[0][1][1][1][2] == class_dirname(0, "zero", 3)     # s0 lives in class zero's folder
    assert all(image_at(root, *parts) is not None for _, files in fool for root, parts, _ in files)
    sal = saliency_rows(inputs)
    assert [[c.split("\n")[0] for _, _, c in files] for _, files in sal] == [["original"] * 2 + ["mixed_rand"] * 2] * 2
    assert all(image_at(root, *parts) is not None for _, files in sal for root, parts, _ in files)


def test_sparse_results_still_render(tmp_path):
    """Optional fields missing or null (no intervals, no BG-gap, no groups), odd labels: a page, not a crash."""
    ev = {"kind": "bgbias-eval/1", "model": "torchscript:$HOME/m.pt", "data": str(tmp_path / "nowhere"),
          "classes": ["a$b$", "c"], "variants": {"original": {"accuracy": 0.5, "ci95": None, "n": 2},
                                                   "texture_noise_0.1": {"accuracy": None, "ci95": None, "n": 0}},
          "bg_gap": None, "signal_groups": None, "families_seen": None, "skipped": []}
    ch = {"kind": "bgbias-challenge/1", "model": "torchscript:$HOME/m.pt", "classes": ["a$b$", "c"],
          "challenge_accuracy": 0.25, "exhaustive": False, "n_foregrounds": 4, "n_backgrounds": 2,
          "top_fooling": {"a$b$": []}}
    write_json(tmp_path / "eval.json", ev)
    write_json(tmp_path / "challenge.json", ch)
    results = write_report([tmp_path / "eval.json", tmp_path / "challenge.json"], tmp_path / "r.html")
    (m,) = results["models"]
    assert m["bg_gap"] is None and m["challenge"]["challenge_accuracy"] == 0.25
    assert "no BG-gap" in m["summary"] and "estimated from 2 backgrounds" in m["summary"]
    text = (tmp_path / "r.html").read_text("utf-8")
    assert "No build folder" in text and "No saliency.json" in text
    assert text.count("<img") == 2                       # summary and accuracy plots only


def test_report_decides_seen_in_training_by_evals_one_rule():
    """When eval.json does not know (null), the report falls back to the same rule eval applies."""
    from bgbias.audit.evaluate import seen_in_training as eval_rule
    from bgbias.report.figures import seen
    from bgbias.report.inputs import ModelResults

    m = ModelResults("k", docs={"metrics": {"families_seen": ["mean", "other_sample", "texture:stripes"]}})
    for v in ("mean", "mean_color", "mixed_next", "texture:stripes:8", "texture:board:8", "original"):
        assert seen(m, v, {"seen_in_training": None}) is bool(eval_rule(v, m.families_seen)), v
    assert [seen(m, v, {}) for v in ("mean_color", "mixed_next")] == [False, True]
    assert seen(m, "original", {"seen_in_training": True}) is True
