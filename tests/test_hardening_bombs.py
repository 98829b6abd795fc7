"""Decompression bombs and oversized inputs are refused from their headers, naming the limit and the user's file,
with bounded memory and nothing (or at most the limit) written to disk."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from pruning import archives, data
from pruning.errors import DataError
from pruning.limits import DataLimits, GiB, MiB
from tests import hostile_files as hf

LIMITS = data.DEFAULT_DATA_LIMITS
DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"   # how the service names blobs


@pytest.fixture
def watch_extraction(monkeypatch):
    """Record, for each archive extraction, the bytes found in its folder when it ended (refused or not)."""
    written: list[int] = []
    real = data.extract_archive

    def extract(archive, target, limits, name=None):
        try:
            real(archive, target, limits, name)
        finally:
            written.append(hf.folder_size(target))
    monkeypatch.setattr(data, "extract_archive", extract)
    return written


def test_zip_bomb_is_refused_from_its_central_directory(tmp_path, watch_extraction):
    bomb = hf.zip_bomb(tmp_path / f"{DIGEST}.zip")
    assert bomb.stat().st_size < 4 * MiB
    with pytest.raises(DataError) as info:
        data.load_images(bomb, name="holiday-photos.zip")
    message = str(info.value)
    assert "holiday-photos.zip" in message and DIGEST not in message
    assert f"max_expanded_bytes={2 * GiB} (2.0 GiB)" in message
    assert "3.0 GiB (3221225472 bytes)" in message
    assert watch_extraction == [0]


def test_zip_member_count_is_limited(tmp_path, watch_extraction):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(5):
            zf.writestr(f"cls/{i}.png", b"x")
    with pytest.raises(DataError, match=r"more than 3 entries, the limit max_members=3$"):
        data.load_images(path, DataLimits(max_members=3))
    assert watch_extraction == [0]


def test_zip_understating_its_size_writes_at_most_what_it_declared(tmp_path, watch_extraction):
    path = hf.zip_understating(tmp_path / "liar.zip", real=64 * MiB, declared=100)
    with pytest.raises(DataError, match=r"cannot read liar.zip: .*CRC"):
        data.load_images(path)
    assert len(watch_extraction) == 1 and watch_extraction[0] <= 4096   # at most the 100 declared bytes (1 block)


def test_tar_gz_bomb_and_lying_header_are_refused_at_the_header(tmp_path, watch_extraction):
    bomb = hf.tar_gz_bomb(tmp_path / "bomb.tar.gz")
    liar = hf.tar_gz_lying(tmp_path / "liar.tgz")
    assert bomb.stat().st_size < 4 * MiB and liar.stat().st_size < 4096
    for path in (bomb, liar):
        with pytest.raises(DataError) as info:
            data.load_images(path)
        assert str(info.value) == (f"refusing archive {path.name}: its headers declare at least 3.0 GiB "
                                   f"(3221225472 bytes) once expanded, above the limit "
                                   f"max_expanded_bytes={2 * GiB} (2.0 GiB)")
    assert watch_extraction == [0, 0]


def test_tar_members_together_are_limited_before_any_is_written(tmp_path, watch_extraction):
    path = tmp_path / "sum.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for i in range(5):
            info = tarfile.TarInfo(f"cls/{i}.png")
            info.size = 300_000
            tf.addfile(info, io.BytesIO(bytes(300_000)))
    with pytest.raises(DataError, match=r"at least 1\.1 MiB \(1200000 bytes\) .* max_expanded_bytes=1048576 "
                                        r"\(1\.0 MiB\)"):
        data.load_images(path, DataLimits(max_expanded_bytes=MiB))
    assert watch_extraction == [0]


def test_streaming_copy_stops_before_the_budget_is_passed(tmp_path):
    budget = archives.Budget(left=2 * MiB + 10, limit=2 * MiB + 10)
    out = io.BytesIO()
    with pytest.raises(DataError, match=r"member 'cls/a.png' expands beyond the limit max_expanded_bytes=2097162"):
        archives.copy_limited(io.BytesIO(bytes(5 * MiB)), out, budget, "data.zip", "cls/a.png")
    assert len(out.getvalue()) == 2 * MiB       # whole chunks only, and never past the limit
    assert budget.left == 10


def test_npz_bomb_is_refused_from_the_npy_header(tmp_path):
    bomb = hf.npz_bomb(tmp_path / f"{DIGEST}.npz", shape=(2560, 1024, 1024, 1))
    assert bomb.stat().st_size < 4 * MiB
    with pytest.raises(DataError) as info:
        data.load_images(bomb, name="cifar-extra.npz")
    assert str(info.value) == ("refusing cifar-extra.npz: array 'images' declares shape (2560, 1024, 1024, 1) "
                               "uint8 = 2.5 GiB; the arrays together would take 2.5 GiB (2684354560 bytes), above "
                               f"the limit max_array_bytes={2 * GiB} (2.0 GiB)")


def test_npz_folder_counts_every_file(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for name in ("train_1.npz", "train_2.npz"):
        np.savez(folder / name, images=np.zeros((10, 8, 8, 3), np.uint8), labels=np.zeros(10, np.int64))
    assert len(data.load_images(folder, DataLimits(max_array_bytes=4000)).train) == 20
    with pytest.raises(DataError, match=r"refusing set: its \.npz files together declare 4000 bytes .* "
                                        r"max_array_bytes=3000$"):
        data.load_images(folder, DataLimits(max_array_bytes=3000))


def test_npz_header_with_object_dtype_is_refused_before_unpickling(tmp_path):
    header = hf.npy_header((2,), "|O")    # followed by no pickle at all: only the header is ever read
    path = hf.write_zip(tmp_path / "o.npz", [("images.npy", _stored(header), len(header), zlib.crc32(header))])
    with pytest.raises(DataError, match="o.npz contains object arrays"):
        data.load_images(path)


def _stored(payload: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    return co.compress(payload) + co.flush()


@pytest.mark.parametrize("width, height, says", [(20000, 20000, "400000000 pixels"),      # PIL's own bomb check
                                                 (5000, 5000, "5000x5000 = 25000000 pixels")])  # ours
def test_png_with_a_huge_header_is_refused_before_decoding(tmp_path, width, height, says):
    hf.png_claiming(tmp_path / "set" / "cat" / "big.png", width, height)
    with pytest.raises(DataError) as info:
        data.load_images(tmp_path / "set", name="pets")
    assert str(info.value) == (f"refusing image pets/cat/big.png: its header says {says}, above the limit "
                               f"max_image_pixels={4096 * 4096}")


def _image_folder(root: Path, n: int) -> Path:
    from PIL import Image

    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / f"c{i % 2}" / f"{i}.png")
    return root


def test_number_of_images_and_decoded_bytes_are_limited(tmp_path):
    root = _image_folder(tmp_path / "imgs", 5)
    assert len(data.load_images(root, DataLimits(max_images=5)).train) == 5
    with pytest.raises(DataError, match=r"^refusing imgs: it holds more than 4 images, the limit max_images=4$"):
        data.load_images(root, DataLimits(max_images=4))
    with pytest.raises(DataError, match=r"^refusing imgs/c\d/\d.png: the images decoded so far and this one would "
                                        r"take more than the limit max_array_bytes=800 "):
        data.load_images(root, DataLimits(max_array_bytes=800))   # 192 bytes each: the 5th passes 800


def test_echoed_names_are_clipped(tmp_path):
    bomb = hf.zip_bomb(tmp_path / "b.zip", declared=3 * GiB)
    with pytest.raises(DataError) as info:
        data.load_images(bomb, name="n" * 10_000)
    assert len(str(info.value)) < 400 and "…[+" in str(info.value)


def test_data_limits_are_validated():
    with pytest.raises(ValueError, match="max_images must be a positive integer"):
        DataLimits(max_images=0)


_CHILD = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))   # a regression dies here instead of filling the disk
from pruning import data
from pruning.errors import DataError
from tests.hostile_files import folder_size
written, results = [], {}
real = data.extract_archive
def extract(archive, target, limits, name=None):
    try:
        real(archive, target, limits, name)
    finally:
        written.append(folder_size(target))
data.extract_archive = extract
for path in sys.argv[1:]:
    try:
        data.load_images(path)
        results[Path(path).name] = "accepted"
    except DataError as exc:
        results[Path(path).name] = str(exc)
print(json.dumps({"results": results, "written": written}))
"""
_WRAPPER = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def test_refusing_every_bomb_keeps_memory_and_disk_bounded(tmp_path):
    bombs = [hf.zip_bomb(tmp_path / "z.zip"), hf.tar_gz_bomb(tmp_path / "t.tar.gz"),
             hf.npz_bomb(tmp_path / "n.npz", shape=(2560, 1024, 1024, 1)),
             hf.png_claiming(tmp_path / "png" / "cls" / "big.png", 20000, 20000).parents[1]]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _WRAPPER, sys.executable, "-c", _CHILD, *map(str, bombs)],
                         capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    report_line, rss_line = out.stdout.strip().splitlines()[-2:]
    report = json.loads(report_line)
    assert all(text.startswith("refusing") for text in report["results"].values()), report["results"]
    assert {"max_expanded_bytes", "max_array_bytes", "max_image_pixels"} <= {
        word.split("=")[0] for text in report["results"].values() for word in text.split()}
    assert report["written"] == [0, 0]
    peak_mib = int(rss_line) / 1024                   # ru_maxrss is in KiB on Linux
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB while refusing the bombs"


def test_a_compression_bomb_under_the_size_limits_is_refused_by_its_ratio(tmp_path, watch_extraction):
    # 100 MiB of zeros deflate to ~100 KB (~1000:1): under max_expanded_bytes (2 GiB), so before the ratio limit it
    # was expanded to disk; real image data compresses a few times at most
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cls/a.png", bytes(100 * MiB))
    with pytest.raises(DataError, match=r"bomb\.zip: its headers declare 100\.0 MiB .* above the limit "
                                        r"max_compression_ratio=200"):
        data.load_images(bomb, LIMITS)
    assert watch_extraction == [0]
    arrays = tmp_path / "bomb.npz"                       # np.load would allocate the 100 MiB
    np.savez_compressed(arrays, images=np.zeros((100 * MiB // 3072, 32, 32, 3), np.uint8),
                        labels=np.zeros(100 * MiB // 3072, np.int64))
    with pytest.raises(DataError, match=r"bomb\.npz: its arrays declare .* max_compression_ratio=200"):
        archives.read_npz_headers(arrays, ["images", "labels"], LIMITS)
    # the same ratio below the 64 MiB floor is not judged (small synthetic sets compress well)
    small = tmp_path / "small.npz"
    np.savez_compressed(small, images=np.zeros((1000, 32, 32, 3), np.uint8), labels=np.zeros(1000, np.int64))
    assert archives.read_npz_headers(small, ["images", "labels"], LIMITS)["images"].shape == (1000, 32, 32, 3)
    assert archives.read_npz_headers(arrays, ["images"], DataLimits(max_compression_ratio=10_000))
