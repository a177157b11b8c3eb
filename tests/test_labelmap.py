"""Label maps: the built-in ImageNet-1000 -> IN-9 table, JSON maps, identity, and their checks."""
from __future__ import annotations

import json

import pytest
import torch

from bgbias.models.labelmap import (
    IN9_CLASSES,
    OUTSIDE,
    imagenet_to_in9_table,
    load_label_map,
)


@pytest.mark.parametrize("index, in9", [(0, 8), (6, 8), (7, 1), (24, 1), (25, OUTSIDE), (33, 3), (68, 3),
                                        (151, 0), (170, 0), (171, OUTSIDE), (172, OUTSIDE), (173, 0), (268, 0),
                                        (269, 4), (300, 5), (326, 5), (327, OUTSIDE), (365, 7), (384, 7),
                                        (389, 8), (397, 8), (398, OUTSIDE), (401, 6), (407, 2), (889, 6),
                                        (880, 2), (999, OUTSIDE)])
def test_imagenet_to_in9_table(index, in9):
    assert imagenet_to_in9_table()[index] == in9


def test_imagenet_to_in9_covers_370_classes_of_every_in9_class():
    t = imagenet_to_in9_table()
    assert len(t) == 1000 and int((t >= 0).sum()) == 370
    assert sorted(set(t.tolist()) - {OUTSIDE}) == list(range(len(IN9_CLASSES)))


def test_predict_maps_argmax_and_outside_is_minus_one():
    lm = load_label_map("imagenet-to-in9")
    logits = torch.zeros(3, 1000)
    logits[0, 160] = 5   # a dog
    logits[1, 500] = 5   # not an IN-9 class
    logits[2, 310] = 5   # an insect
    assert lm.predict(logits).tolist() == [0, OUTSIDE, 5]
    assert load_label_map("identity").predict(torch.eye(3)).tolist() == [0, 1, 2]
    assert load_label_map(None).name == "identity"


def test_json_list_and_dict_maps(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps([1, 0, -1]))
    (tmp_path / "d.json").write_text(json.dumps({"0": 1, "3": 0}))
    lm = load_label_map(str(tmp_path / "l.json"))
    assert lm.table == (1, 0, -1)
    assert load_label_map(str(tmp_path / "d.json")).table == (1, -1, -1, 0)
    assert lm.predict(torch.tensor([[0.0, 0, 9], [9.0, 0, 0]])).tolist() == [-1, 1]
    assert lm.members(0, 3) == [1]


@pytest.mark.parametrize("content, match", [("[1, \"a\"]", "integer"), ("{\"x\": 1}", "integer model-class"),
                                            ("nope", "not valid JSON"), ("3", "list or an object")])
def test_bad_json_maps(tmp_path, content, match):
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_label_map(str(tmp_path / "m.json"))


def test_unknown_map_lists_choices():
    with pytest.raises(ValueError, match="imagenet-to-in9, identity"):
        load_label_map("imagenet-to-in10")


def test_check_output_size_and_targets():
    with pytest.raises(ValueError, match="10 outputs but label map 'imagenet-to-in9' covers 1000"):
        load_label_map("imagenet-to-in9").check(10, 9)
    with pytest.raises(ValueError, match="5 outputs but the data has 3 classes"):
        load_label_map("identity").check(5, 3)
    with pytest.raises(ValueError, match="for the 9 IN-9 classes"):
        load_label_map("imagenet-to-in9").check(1000, 3)
    with pytest.raises(ValueError, match="dataset class 2, but the data has only 2 classes"):
        load_label_map("identity").__class__("m.json", (0, 2)).check(2, 2)
    load_label_map("imagenet-to-in9").check(1000, 9)
