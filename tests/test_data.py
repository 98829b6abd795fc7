import io
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from pruning import data
from pruning.errors import DataError
from tests.conftest import make_npz


def test_npz_loads_and_ignores_extra_keys(tmp_path):
    path = make_npz(tmp_path / "d.npz", n=20, channels=3, filenames=np.array(["a"] * 20))
    source = data.load_images(path)
    assert source.train.images.shape == (20, 8, 8, 3) and source.test is None


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, images=np.array([{"a": 1}] * 4, dtype=object), labels=np.arange(4))
    with pytest.raises(DataError, match="object arrays"):
        data.load_images(path)


def test_labels_out_of_range_and_channel_mismatch_are_named(tmp_path):
    source = data.load_images(make_npz(tmp_path / "d.npz", classes=12, channels=1))
    with pytest.raises(DataError, match="label 11 .* 10 classes"):
        data.check_fits_model(source.train, (1, 8, 8), 10)
    with pytest.raises(DataError, match="1-channel images but the model expects 3"):
        data.check_fits_model(source.train, (3, 8, 8), 20)


def test_size_mismatch_without_resize(tmp_path):
    source = data.load_images(make_npz(tmp_path / "d.npz", size=8))
    with pytest.raises(DataError, match="8x8 images but the model expects 32x32"):
        data.check_fits_model(source.train, (1, 32, 32), 10)


def _tar_with(path, name, payload=b"x", symlink=False):
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo(name)
        if symlink:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        else:
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def test_archive_with_parent_paths_is_refused(tmp_path):
    with pytest.raises(DataError, match="outside the extraction folder"):
        data.load_images(_tar_with(tmp_path / "bad.tar", "../escape.png"))
    assert not (tmp_path / "escape.png").exists()
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../../escape.png", b"x")
    with pytest.raises(DataError, match="outside the extraction folder"):
        data.load_images(zpath)


def test_archive_with_links_is_refused(tmp_path):
    with pytest.raises(DataError, match="link"):
        data.load_images(_tar_with(tmp_path / "link.tar", "cls/a.png", symlink=True))


def test_image_folder_archive_loads_with_class_names(tmp_path):
    from PIL import Image

    root = tmp_path / "set"
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * label + i, np.uint8)).save(root / name / f"{i}.png")
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="set")
    source = data.load_images(archive)
    assert source.train.class_names == ("cat", "dog")
    assert source.train.images.shape == (6, 8, 8, 3)
    assert list(source.train.labels) == [0, 0, 0, 1, 1, 1]


def test_cifar_batches_load_and_malicious_ones_are_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch))
    source = data.load_images(folder)
    assert source.train.images.shape == (4, 32, 32, 3) and source.test is not None

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match="could run code"):
        data.load_images(folder)


def test_splits_are_disjoint_and_deterministic():
    source = data.digits_sample()
    a = data.make_splits(source, calibration=300, evaluation=None, seed=3)
    b = data.make_splits(source, calibration=300, evaluation=None, seed=3)
    assert np.array_equal(a.calibration.images, b.calibration.images)
    sizes = a.sizes()
    assert sizes["calibration"] == 300 and sizes["evaluation"] == round(0.2 * len(source.train))
    assert sizes["calibration"] + sizes["finetune"] + sizes["evaluation"] == len(source.train)
    as_bytes = lambda s: {img.tobytes() + bytes([int(l)]) for img, l in zip(s.images, s.labels)}  # noqa: E731
    assert not as_bytes(a.calibration) & as_bytes(a.evaluation)


def test_preprocess_normalises_and_resizes():
    images = np.full((2, 4, 4, 3), 255, np.uint8)
    x = data.Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), size=(8, 8))(images)
    assert x.shape == (2, 3, 8, 8)
    assert torch.allclose(x, torch.ones_like(x), atol=1e-5)


def test_a_set_smaller_than_asked_for_says_so_in_notes():
    source = data.DataSource(data.ImageSet(np.zeros((48, 2, 2, 1), np.uint8), np.arange(48) % 4), None, "48 images")
    splits = data.make_splits(source, calibration=1000, evaluation=None, seed=0)
    assert len(splits.calibration) == 38 and splits.finetune_is_calibration
    assert data.split_notes(splits, 1000, None, finetuning=False) == [
        "calibration uses 38 images: the data set has no more to spare (calibration_images is 1000)"]
    assert "fine-tuning reuses the 38 calibration images" in data.split_notes(splits, 1000, None, finetuning=True)[1]
    roomy = data.make_splits(source, calibration=20, evaluation=None, seed=0)
    assert not roomy.finetune_is_calibration and data.split_notes(roomy, 20, None, finetuning=True) == []


def _split(labels):
    labels = np.asarray(labels, np.int64)
    return data.ImageSet(np.zeros((len(labels), 2, 2, 1), np.uint8), labels)


def test_label_coverage_warns_on_a_one_class_set_and_returns_the_warnings(caplog):
    splits = data.Splits(_split([0] * 20), _split([0] * 20), _split([0] * 20))
    warnings = data.check_label_coverage(splits, num_classes=10)
    assert warnings == [
        "the evaluation split has 1 distinct label(s) among 20 images for a 10-class model (fewer than 50% of the "
        "10 it could hold): its accuracy speaks for those classes only",
        "the calibration split has 1 distinct label(s) among 20 images for a 10-class model (fewer than 50% of the "
        "10 it could hold): its accuracy speaks for those classes only"]
    assert warnings[0] in caplog.text


def test_label_coverage_is_quiet_for_a_fair_sample_and_judges_by_what_the_size_allows():
    fair = data.Splits(_split(range(10)), _split(range(10)), _split([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]))
    assert data.check_label_coverage(fair, num_classes=10) == []
    small = data.Splits(_split([0, 1, 2]), _split([0]), _split([3, 4, 1]))   # 3 of 3 possible: fine
    assert data.check_label_coverage(small, num_classes=1000) == []
    assert data.check_label_coverage(fair, num_classes=10, min_coverage=1.01) != []


def test_label_coverage_refuses_evaluation_classes_never_seen():
    splits = data.Splits(_split([0, 1, 2]), _split([1, 2]), _split([5, 6, 7, 8, 9, 10, 11, 12, 13]))
    with pytest.raises(DataError, match=r"^the evaluation split's classes \{5, 6, 7, 8, 9, 10, 11, 12, \.\.\.\} share "
                                        r"none with the calibration and fine-tune splits' classes \{0, 1, 2\}"):
        data.check_label_coverage(splits, num_classes=20)


def test_messages_name_the_users_file_and_clip_long_names(tmp_path):
    path = tmp_path / "0123abcd.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"^my-set.npz must hold arrays 'images' and 'labels' \(found: \['images'\]\)"):
        data.load_images(path, name="my-set.npz")
    with pytest.raises(DataError) as info:
        data.load_images(tmp_path / ("q" * 10_000))
    assert len(str(info.value)) < 250


def test_augmentation_flips_and_crops_each_image_at_its_own_offset():
    from pruning.data import flip_and_crop

    n, h, w = 64, 16, 16
    x = torch.arange(n * h * w, dtype=torch.float32).view(n, 1, h, w) + 1    # every pixel distinct and non-zero
    out = flip_and_crop(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    pad, found = h // 8, set()
    for i in range(n):
        padded = torch.nn.functional.pad(x[i], (pad, pad, pad, pad))
        matches = [(dy, dx, flipped) for flipped in (False, True) for dy in range(2 * pad + 1)
                   for dx in range(2 * pad + 1)
                   if torch.equal(out[i], (padded.flip(-1) if flipped else padded)[:, dy:dy + h, dx:dx + w])]
        assert len(matches) == 1                   # one flip and one offset within the padding explain each image
        found.add(matches[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 10                  # offsets differ between images
    assert {flipped for _, _, flipped in found} == {False, True}


def test_preprocessed_batches_are_contiguous_nchw_for_models_that_view_them():
    # before: batches kept the NHWC source's strides, so a model's x.view(x.size(0), -1) raised at load
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    x = data.Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(images)
    assert x.shape == (4, 3, 6, 6) and x.is_contiguous()
    assert x.view(4, -1).shape == (4, 108)


def test_an_archive_of_an_npz_folder_reads_as_that_folder_and_keeps_the_npz_checks(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    make_npz(folder / "train_00.npz", n=30, channels=3)
    make_npz(folder / "test.npz", n=10, channels=3)
    packed = tmp_path / "set.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(folder, arcname="set")
    source = data.load_images(packed)
    assert (len(source.train.labels), len(source.test.labels)) == (30, 10)
    assert "npz folder" in source.description and "set.tar.gz" in source.description

    np.savez(folder / "test.npz", images=np.array([{"a": 1}] * 4, dtype=object), labels=np.arange(4))
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(folder, arcname="set")
    with pytest.raises(DataError, match="object arrays"):
        data.load_images(packed)
