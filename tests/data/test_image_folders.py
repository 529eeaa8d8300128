"""Folders of PNG/JPEG images as datasets: the three layouts, resizing, the decoded-array cache, and errors."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from dass.data import DataConfig, load_dataset, prepare_data
from dass.data import datasets as datasets_module
from dass.data.datasets import folder_cache_dir, list_image_folder, load_image_folder
from dass.errors import DassError

COLORS = {"ant": (250, 10, 10), "bee": (10, 250, 10), "cow": (10, 10, 250), "dog": (250, 250, 10)}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test caches in its own folder, never in the user's ~/.cache."""
    monkeypatch.setenv("DASS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "folders"


def _save(path, color=(128, 128, 128), size=(12, 16), mode="RGB", noise=0, seed=0):
    """An image of ``size`` (height, width), one colour plus optional noise, saved by extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    pixels = np.empty((h, w, 3), np.int64)
    pixels[...] = color
    if noise:
        pixels += np.random.default_rng(seed).integers(-noise, noise + 1, (h, w, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    img = img.convert(mode)
    img.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)
    return path


def _class_set(root, classes=("bee", "ant", "cow"), per_class=5, ext=".png", size=(12, 16), mode="RGB"):
    for c in classes:
        for i in range(per_class):
            _save(root / c / f"img{i}{ext}", COLORS[c], size, mode, noise=3, seed=i)
    return root


def _mean_colors(x):
    return x.reshape(len(x), -1, x.shape[-1]).mean(1)


def _labels_match_colors(ds):
    """Each image's mean colour is its class's colour (labels follow the folder names)."""
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        expected = np.array([COLORS[ds.class_names[k]] for k in y], float)
        np.testing.assert_allclose(_mean_colors(x), expected, atol=6)


# -- layouts -----------------------------------------------------------------------------------
def test_one_set_of_class_folders_is_split_per_class(tmp_path):
    root = _class_set(tmp_path / "pets")
    ds = load_dataset(str(root))
    assert ds.name == "pets"
    assert ds.class_names == ["ant", "bee", "cow"]                      # sorted folder names
    assert ds.x_train.shape == (12, 12, 16, 3) and ds.x_test.shape == (3, 12, 16, 3)
    assert ds.x_train.dtype == np.uint8
    assert sorted(ds.y_test.tolist()) == [0, 1, 2]                       # 20% of each class: one image
    assert np.bincount(ds.y_train).tolist() == [4, 4, 4]
    _labels_match_colors(ds)
    # PNG is lossless: the stored pixels are the file's, unresized
    stored = {tuple(img.reshape(-1)) for img in np.concatenate([ds.x_train, ds.x_test])}
    assert tuple(np.asarray(Image.open(root / "bee" / "img3.png")).reshape(-1)) in stored


def test_the_held_out_split_is_fixed_and_follows_split_fraction(tmp_path):
    root = _class_set(tmp_path / "pets", per_class=10)
    a = load_image_folder(root, cache=False)
    b = load_image_folder(root, cache=False)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_test, b.y_test)
    listing = list_image_folder(root)
    assert listing.layout == "single" and len(listing.test) == 6
    wider = load_dataset(str(root), split_fraction=0.5)
    assert np.bincount(wider.y_test).tolist() == [5, 5, 5]
    # classes of two images still give one to each split; a single image stays in training
    small = tmp_path / "small"
    _save(small / "ant" / "a.png", COLORS["ant"])
    _save(small / "ant" / "b.png", COLORS["ant"])
    _save(small / "bee" / "a.png", COLORS["bee"])
    ds = load_dataset(str(small))
    assert ds.y_train.tolist() == [0, 1] and ds.y_test.tolist() == [0]


def test_train_and_val_folders_of_jpegs(tmp_path):
    root = tmp_path / "set"
    _class_set(root / "train", ext=".jpg", per_class=3)
    _class_set(root / "val", classes=("ant", "cow"), ext=".JPEG", per_class=2)   # val may lack a class
    _class_set(root / "test", classes=("dog",), ext=".jpg", per_class=1)         # val wins over test
    (root / "README.txt").write_text("not a folder, ignored")
    ds = load_dataset(str(root))
    assert ds.class_names == ["ant", "bee", "cow"]
    assert ds.x_train.shape == (9, 12, 16, 3) and ds.x_test.shape == (4, 12, 16, 3)
    assert ds.y_train.tolist() == [0] * 3 + [1] * 3 + [2] * 3 and ds.y_test.tolist() == [0, 0, 2, 2]
    _labels_match_colors(ds)
    assert list_image_folder(root).test_dir == "val"


def test_train_and_test_folders_and_train_alone(tmp_path):
    root = tmp_path / "set"
    _class_set(root / "train", per_class=3)
    _class_set(root / "test", classes=("bee",), per_class=2)
    ds = load_dataset(str(root))
    assert ds.y_test.tolist() == [1, 1] and len(ds.x_train) == 9
    alone = tmp_path / "alone"
    _class_set(alone / "train", per_class=5)
    ds = load_dataset(str(alone))                                     # split by data.split_fraction
    assert len(ds.x_train) == 12 and len(ds.x_test) == 3


def test_images_in_nested_folders_of_a_class_count(tmp_path):
    root = tmp_path / "pets"
    _class_set(root, per_class=2)
    _save(root / "ant" / "more" / "deeper.png", COLORS["ant"])
    _save(root / "ant" / ".hidden.png", COLORS["bee"])                # hidden files are skipped
    (root / "ant" / "notes.txt").write_text("not an image")
    ds = load_dataset(str(root))
    assert np.bincount(np.concatenate([ds.y_train, ds.y_test])).tolist() == [3, 2, 2]


def _tiny_imagenet(root, wnids=("n01443537", "n01629819", "n01641577"), per_class=3, val_per_class=2):
    colors = dict(zip(wnids, [COLORS["ant"], COLORS["bee"], COLORS["cow"], COLORS["dog"]]))
    (root).mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("\n".join(f"{w}\tsomething" for w in wnids) + "\n")
    for w in wnids:
        for i in range(per_class):
            _save(root / "train" / w / "images" / f"{w}_{i}.JPEG", colors[w], (64, 64), noise=3, seed=i)
        (root / "train" / w / f"{w}_boxes.txt").write_text("".join(f"{w}_{i}.JPEG\t0\t0\t63\t63\n"
                                                                   for i in range(per_class)))
    lines = []
    for k in range(val_per_class * len(wnids)):
        w = wnids[(k * 2) % len(wnids)]          # the val files' order differs from the classes' order
        _save(root / "val" / "images" / f"val_{k}.JPEG", colors[w], (64, 64), noise=3, seed=k)
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _save(root / "test" / "images" / "test_0.JPEG", (0, 0, 0), (64, 64))   # unlabelled: not used
    return root, colors


def test_tiny_imagenet_layout(tmp_path):
    root, colors = _tiny_imagenet(tmp_path / "tiny-imagenet-200")
    listing = list_image_folder(root)
    assert listing.layout == "tiny-imagenet"
    ds = load_dataset(str(root))
    assert ds.class_names == sorted(colors)
    assert ds.x_train.shape == (9, 64, 64, 3) and ds.x_test.shape == (6, 64, 64, 3)
    assert ds.image_size == (64, 64) and ds.in_channels == 3
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        expected = np.array([colors[ds.class_names[k]] for k in y], float)
        np.testing.assert_allclose(_mean_colors(x), expected, atol=6)
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2]
    # data.image_size=32 for a quicker network, and the loaders' whole set-up
    data = prepare_data(DataConfig(dataset=str(root), image_size=32, crop_padding=4), batch_size=4, seed=0,
                        search=False)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 3
    x, y = next(data.train.batches(0))
    assert tuple(x.shape) == (4, 3, 32, 32)


# -- channels and sizes ------------------------------------------------------------------------
def test_grayscale_folders_stay_one_channel_and_mixed_ones_become_rgb(tmp_path):
    gray = _class_set(tmp_path / "gray", mode="L")
    ds = load_dataset(str(gray))
    assert ds.in_channels == 1 and ds.x_train.shape[1:] == (12, 16, 1)
    _save(gray / "ant" / "colour.png", COLORS["ant"])
    ds = load_dataset(str(gray))
    assert ds.in_channels == 3
    grey_images = [x for x in ds.x_train if (x == x[..., :1]).all()]   # the grey ones: R = G = B
    assert len(grey_images) >= 10


def test_resize_covers_and_centre_crops(tmp_path):
    root = tmp_path / "wide"
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)
    pixels[:, 10:30] = (0, 255, 0)
    pixels[:, 30:] = (0, 0, 255)
    for c in ("a", "b"):
        for i in range(2):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    ds = load_dataset(str(root), image_size=10)
    assert ds.x_train.shape[1:] == (10, 10, 3)
    # the aspect ratio is kept: the centre 20 x 20 (green) fills the image, the red and blue sides are cut off
    # (but for the filter's faint reach across the crop's edge; stretching would make 2-3 columns red or blue)
    assert (ds.x_train[..., 1] >= 200).all() and (ds.x_train[..., [0, 2]] <= 60).all()
    up = load_dataset(str(root), image_size=64)                      # enlarging works too
    assert up.x_train.shape[1:] == (64, 64, 3)


def test_default_size_is_the_common_one_else_32(tmp_path, capsys):
    root = _class_set(tmp_path / "mostly", per_class=3, size=(20, 30))
    _save(root / "ant" / "odd.png", COLORS["ant"], (50, 50))
    ds = load_dataset(str(root))
    assert ds.image_size == (20, 30)                                   # 9 of 10 images are 20 x 30
    assert "differ in size" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    for i, size in enumerate([(10, 10), (11, 12), (13, 14), (15, 16)]):
        _save(mixed / ("ant" if i % 2 else "bee") / f"{i}.png", COLORS["bee"], size)
    assert load_dataset(str(mixed)).image_size == (32, 32)             # no size shared by half of them
    big = _class_set(tmp_path / "big", per_class=2, size=(300, 260))
    assert load_dataset(str(big)).image_size == (32, 32)               # over 256 a side: set data.image_size
    assert "over 256 pixels" in capsys.readouterr().err


def test_exif_rotation_is_applied(tmp_path):
    root = tmp_path / "photos"
    for c in ("ant", "bee"):
        for i in range(2):
            img = Image.fromarray(np.full((10, 20, 3), 99, np.uint8))     # stored 10 high, 20 wide
            exif = Image.Exif()
            exif[0x0112] = 6                                               # "rotate 90 degrees to display"
            (root / c).mkdir(parents=True, exist_ok=True)
            img.save(root / c / f"{i}.jpg", exif=exif)
    assert load_dataset(str(root)).image_size == (20, 10)


# -- the cache ---------------------------------------------------------------------------------
def _fail_decoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("decoded although the cache is up to date")

    monkeypatch.setattr(datasets_module, "_decode", boom)


def test_the_cache_is_reused_then_invalidated_by_changes(tmp_path, monkeypatch, cache_dir):
    root = _class_set(tmp_path / "pets")
    first = load_dataset(str(root))
    files = sorted(cache_dir.glob("*.npz"))
    assert len(files) == 1 and folder_cache_dir() == cache_dir
    with monkeypatch.context() as m:
        _fail_decoding(m)
        again = load_dataset(str(root))                                  # from the cache: nothing decoded
        assert np.array_equal(again.x_train, first.x_train) and again.class_names == first.class_names
        assert np.array_equal(again.y_test, first.y_test)
    # rewrite one image (new content, new time): decoded again, and the stale cache file is removed
    target = root / "ant" / "img0.png"
    _save(target, (0, 0, 0))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    changed = load_dataset(str(root))
    assert not np.array_equal(np.concatenate([changed.x_train, changed.x_test]),
                              np.concatenate([first.x_train, first.x_test]))
    after = sorted(cache_dir.glob("*.npz"))
    assert len(after) == 1 and after != files
    # a new image is a change too
    _save(root / "bee" / "new.png", COLORS["bee"])
    assert len(load_dataset(str(root)).x_train) + len(load_dataset(str(root)).x_test) == 16
    # another image size is another cache file, kept beside the first
    load_dataset(str(root), image_size=8)
    assert len(list(cache_dir.glob("*.npz"))) == 2
    with monkeypatch.context() as m:
        _fail_decoding(m)
        assert load_dataset(str(root), image_size=8).image_size == (8, 8)
        assert load_dataset(str(root)).image_size == (12, 16)


def test_a_damaged_cache_is_decoded_again(tmp_path, cache_dir):
    root = _class_set(tmp_path / "pets")
    first = load_dataset(str(root))
    (cached,) = cache_dir.glob("*.npz")
    cached.write_bytes(b"not a zip archive")
    again = load_dataset(str(root))
    assert np.array_equal(again.x_train, first.x_train)
    np.load(cached).close()                                               # rewritten whole


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DASS_CACHE", str(blocker))
    root = _class_set(tmp_path / "pets")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(str(root))
    assert len(ds.x_train) == 12
    assert any("could not cache" in str(w.message) for w in caught)


# -- errors ------------------------------------------------------------------------------------
def _error(spec, **kwargs) -> str:
    with pytest.raises(DassError) as info:
        load_dataset(str(spec), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty_and_imageless_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "holds no images, class folders" in _error(tmp_path / "empty")
    _save(tmp_path / "loose" / "a.png")
    assert "no class folders" in _error(tmp_path / "loose")
    root = _class_set(tmp_path / "pets")
    (root / "eel").mkdir()
    (root / "eel" / "notes.txt").write_text("no images here")
    message = _error(root)
    assert "class folder" in message and "eel" in message and "holds no images" in message
    train_only_empty = tmp_path / "split"
    (train_only_empty / "train").mkdir(parents=True)
    (train_only_empty / "val").mkdir()
    assert "train is empty" in _error(train_only_empty)


def test_corrupt_and_truncated_images_are_named(tmp_path):
    root = _class_set(tmp_path / "pets")
    (root / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    message = _error(root)
    assert "broken.png" in message and "corrupt" in message
    (root / "bee" / "broken.png").unlink()
    jpeg = _save(root / "cow" / "cut.jpg", COLORS["cow"], (64, 64), noise=40)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    message = _error(root)
    assert "cut.jpg" in message and "truncated" in message


def test_mixed_layouts(tmp_path):
    root = _class_set(tmp_path / "a")
    _class_set(root / "train")
    message = _error(root)
    assert "mixes layouts" in message and "train" in message
    root = _class_set(tmp_path / "b")
    _save(root / "stray.png")
    assert "mixes layouts" in _error(root)
    root = tmp_path / "c"
    _class_set(root / "train")
    _save(root / "train" / "stray.png")
    assert "mixes layouts" in _error(root)
    root = tmp_path / "d"
    _class_set(root / "val")
    assert "no train/" in _error(root)


def test_val_classes_must_be_training_classes(tmp_path):
    root = tmp_path / "set"
    _class_set(root / "train", classes=("ant", "bee"))
    _class_set(root / "val", classes=("ant", "dog"))
    message = _error(root)
    assert "dog" in message and "train/ lacks" in message


def test_tiny_imagenet_annotation_errors(tmp_path):
    root, _ = _tiny_imagenet(tmp_path / "t1")
    notes = root / "val" / "val_annotations.txt"
    notes.write_text(notes.read_text() + "val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
    assert "n09999999" in _error(root)
    root, _ = _tiny_imagenet(tmp_path / "t2")
    _save(root / "val" / "images" / "extra.JPEG", (1, 2, 3), (64, 64))
    assert "extra.JPEG" in _error(root) and "not listed" in _error(root)
    root, _ = _tiny_imagenet(tmp_path / "t3")
    (root / "val" / "images" / "val_1.JPEG").unlink()
    assert "missing" in _error(root)


def test_too_few_images_and_bad_options(tmp_path):
    root = tmp_path / "singles"
    _save(root / "ant" / "a.png")
    _save(root / "bee" / "a.png")
    assert "single image" in _error(root)
    pets = _class_set(tmp_path / "pets")
    for fraction in (0, 1, 1.5, -0.1, True, "a"):
        assert "split_fraction" in _error(pets, split_fraction=fraction)
    for size in (0, -3, 5000, 2.5, True):
        assert "image_size" in _error(pets, image_size=size)


def test_image_size_is_refused_for_arrays_of_another_size(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8, 1), np.uint8), y_train=np.array([0, 1, 0, 1]),
             x_test=np.zeros((2, 8, 8, 1), np.uint8), y_test=np.array([0, 1]))
    assert load_dataset(str(path), image_size=8).image_size == (8, 8)     # the arrays' own size is fine
    assert "applies to folders of images" in _error(path, image_size=16)
