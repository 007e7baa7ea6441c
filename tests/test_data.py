import json

import pytest
import torch
from PIL import Image

from dice.data import CaptionedImages, DataLayoutError, ShardBatches, load_records, make_loader


def _coco(root, n=4, size=(60, 40)):
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i in range(n):
        name = f"{i:012d}.jpg"
        Image.new("RGB", size, (i * 40, 10, 10)).save(root / "train2017" / name)
        images.append({"id": 100 + i, "file_name": name})
        anns += [{"image_id": 100 + i, "id": 2 * i, "caption": f"caption {i} a"},
                 {"image_id": 100 + i, "id": 2 * i + 1, "caption": f"caption {i} b "}]
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def test_coco_layout(tmp_path):
    layout, records = load_records(_coco(tmp_path / "coco"))
    assert layout == "coco2017" and len(records) == 4
    assert records[0].captions == ["caption 0 a", "caption 0 b"]


def test_imagefolder_layout_center_crop_and_resize(tmp_path, tiny_dataset):
    layout, records = load_records(tiny_dataset)
    assert layout == "imagefolder" and len(records) == 24 and len(records[0].captions) == 2
    coco_layout, coco_records = load_records(_coco(tmp_path / "coco"))
    item = CaptionedImages(coco_records, 16)[(0, 7)]
    assert item["pixels"].shape == (3, 16, 16)
    assert item["pixels"].min() >= -1 and item["pixels"].max() <= 1
    assert item["sizes"].tolist()[:2] == [40, 60]  # original height, width
    assert item["caption"] in coco_records[0].captions


def test_caption_choice_is_seeded(tiny_dataset):
    _, records = load_records(tiny_dataset)
    ds = CaptionedImages(records, 16)
    picks = {ds[(3, seed)]["caption"] for seed in range(20)}
    assert picks == set(records[3].captions)  # both captions get used
    assert ds[(3, 5)]["caption"] == ds[(3, 5)]["caption"]


@pytest.mark.parametrize("make, fragment", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "neither a COCO layout nor metadata.jsonl"),
    (lambda root: (root.mkdir(), (root / "train2017").mkdir()), "incomplete"),
    (lambda root: (root.mkdir(), (root / "metadata.jsonl").write_text('{"file": "a.png"}\n')), "line 1"),
])
def test_bad_layouts_show_the_expected_tree(tmp_path, make, fragment):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataLayoutError) as err:
        load_records(root)
    assert fragment in str(err.value) and "captions_train2017.json" in str(err.value) and "metadata.jsonl" in str(err.value)


def test_unreadable_image_is_skipped_and_counted(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "good.png")
    (root / "bad.png").write_bytes(b"not an image")
    (root / "metadata.jsonl").write_text('{"file_name": "bad.png", "text": "x"}\n{"file_name": "good.png", "text": "y"}\n')
    _, records = load_records(root)
    item = CaptionedImages(records, 8)[(0, 0)]
    assert item["skipped"] == 1 and item["caption"] == "y"
    batch = next(iter(make_loader(records, 8, 2, 0, 1, seed=0)))
    assert batch["pixels"].shape == (2, 3, 8, 8) and batch["skipped"] >= 1


def test_shards_are_disjoint_and_resume_exactly():
    per_rank = [ShardBatches(10, 2, rank, 2, seed=3) for rank in range(2)]
    first_epoch = [set(), set()]
    for rank, sampler in enumerate(per_rank):
        it = iter(sampler)
        for _ in range(5):  # 5 batches of 2 = one pass over the rank's 5 items
            first_epoch[rank].update(i for i, _ in next(it))
    assert first_epoch[0] == {0, 2, 4, 6, 8} and first_epoch[1] == {1, 3, 5, 7, 9}
    full = iter(ShardBatches(10, 2, 0, 1, seed=3))
    batches = [next(full) for _ in range(9)]
    resumed = iter(ShardBatches(10, 2, 0, 1, seed=3, start=4))
    assert [next(resumed) for _ in range(5)] == batches[4:]
