"""Safe extraction into the normalised layout, and refusal of every hostile archive entry."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.data import DataError
from ferlab.data.archive import copy_folder, extract_zip, find_split_root
from ferlab.data.download import prepare_raw


def png(seed: int, size: int = 48) -> bytes:
    """A real (noise) PNG; distinct seeds give distinct images."""
    image = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def write_zip(path: Path, entries: dict[str, bytes], infos: list[tuple] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for info, data in infos:
            zf.writestr(info, data)
    return path


def kaggle_like(prefix: str = "fer2013plus/") -> dict[str, bytes]:
    entries = {}
    for s, split in enumerate(("train", "test")):
        for c, label in enumerate(("anger", "happiness")):
            for k in range(3):
                entries[f"{prefix}{split}/{label}/fer{c}{k}{split}.png"] = png(100 * s + 10 * c + k)
    return entries


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_extract_finds_nested_train_test_and_normalises(tmp_path: Path) -> None:
    entries = kaggle_like("downloads/v2/fer2013plus/")
    entries["downloads/v2/fer2013plus/README.txt"] = b"about"
    entries["__MACOSX/fer2013plus/train/anger/._x.png"] = b"junk"
    entries["downloads/v2/fer2013plus/train/anger/.DS_Store"] = b"junk"
    archive = write_zip(tmp_path / "a.zip", entries)
    counts = extract_zip(archive, tmp_path / "raw", max_extract_mb=10)
    assert counts == {"train": 6, "test": 6}
    files = sorted(
        p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.png")
    )
    assert files[0] == "test/anger/fer00test.png"
    assert all(len(Path(f).parts) == 3 for f in files)
    assert not list((tmp_path / "raw").rglob(".DS_Store"))
    # Bytes are copied unchanged.
    name = "downloads/v2/fer2013plus/train/happiness/fer11train.png"
    assert (tmp_path / "raw/train/happiness/fer11train.png").read_bytes() == entries[name]


@pytest.mark.parametrize(
    "bad_name",
    ["../evil.png", "fer2013plus/train/../../../evil.png", "/tmp/evil.png", "C:/evil.png"],
)
def test_path_traversal_entry_is_refused_and_nothing_is_written(
    tmp_path: Path, bad_name: str
) -> None:
    entries = kaggle_like()
    entries[bad_name] = png(1)
    archive = write_zip(tmp_path / "evil.zip", entries)
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(DataError, match="refusing") as err:
        prepare_raw(str(archive), target=project / "data/raw")
    assert repr(bad_name) in str(err.value)
    # No data/raw, no temporary folder, nothing outside the target.
    assert leftovers(project / "data") == []
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("fer2013plus/train/anger/link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = write_zip(tmp_path / "link.zip", kaggle_like(), [(link, "/etc/passwd")])
    with pytest.raises(DataError, match="symbolic link"):
        prepare_raw(str(archive), target=tmp_path / "data/raw")
    assert leftovers(tmp_path / "data") == []


def test_special_file_entry_is_refused(tmp_path: Path) -> None:
    fifo = zipfile.ZipInfo("fer2013plus/train/anger/pipe")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    archive = write_zip(tmp_path / "fifo.zip", kaggle_like(), [(fifo, b"")])
    with pytest.raises(DataError, match="special file"):
        extract_zip(archive, tmp_path / "raw", max_extract_mb=10)
    assert not (tmp_path / "raw").exists()


def test_zip_bomb_over_max_extract_mb_is_refused(tmp_path: Path) -> None:
    entries = kaggle_like()
    entries["fer2013plus/train/anger/huge.png"] = bytes(600_000)  # compresses to ~1 kB
    archive = write_zip(tmp_path / "bomb.zip", entries)
    assert archive.stat().st_size < 0.1 * 2**20  # a small file that unpacks past the limit
    bomb = r"0\.6 MiB, over data\.max_extract_mb = 0\.5 MiB.*decompression bomb"
    with pytest.raises(DataError, match=bomb):
        prepare_raw(str(archive), target=tmp_path / "data/raw", max_extract_mb=0.5)
    assert leftovers(tmp_path / "data") == []


def test_absurd_compression_ratio_is_refused_even_under_the_size_limit(tmp_path: Path) -> None:
    entries = kaggle_like()
    entries["fer2013plus/train/anger/zeros.png"] = bytes(8 << 20)  # 8 MiB of zeros, ~1000×
    archive = write_zip(tmp_path / "ratio.zip", entries)
    with pytest.raises(DataError, match="expands"):
        extract_zip(archive, tmp_path / "raw", max_extract_mb=2048)


def test_archive_without_train_and_test_is_refused(tmp_path: Path) -> None:
    entries = {k.replace("/test/", "/valid/"): v for k, v in kaggle_like().items()}
    archive = write_zip(tmp_path / "no_test.zip", entries)
    with pytest.raises(DataError, match=r"no folder with both train/ and test/"):
        prepare_raw(str(archive), target=tmp_path / "data/raw")
    assert leftovers(tmp_path / "data") == []


def test_two_datasets_in_one_archive_are_ambiguous() -> None:
    names = ["a/train/x/1.png", "a/test/x/1.png", "b/train/x/1.png", "b/test/x/1.png"]
    with pytest.raises(DataError, match="several"):
        find_split_root(names, "two.zip")
    assert find_split_root([*names, "train/x/1.png", "test/x/1.png"], "z") == ""


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fer.zip"
    fake.write_text("<html>Please log in</html>")
    with pytest.raises(DataError, match="not a zip archive"):
        prepare_raw(str(fake), target=tmp_path / "data/raw")
    assert leftovers(tmp_path / "data") == []


def test_folder_source_is_copied_into_the_layout(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name, data in kaggle_like("unpacked/").items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    summary = prepare_raw(str(source), target=tmp_path / "data/raw")
    assert summary["counts"] == {"train": 6, "test": 6}
    assert summary["classes"] == ["anger", "happiness"]
    assert (tmp_path / "data/raw/test/happiness/fer12test.png").is_file()


def test_folder_source_with_a_symlink_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name, data in kaggle_like().items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    (source / "fer2013plus/train/anger/link.png").symlink_to("/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        copy_folder(source, tmp_path / "raw")


def damage_entry(archive: Path, name: str, compression: int, garbage: bool) -> None:
    """Overwrite part of one entry's stored data in place (headers and sizes stay intact)."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(name)
        assert info.compress_type == compression
    data = bytearray(archive.read_bytes())
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    if garbage:  # not a deflate stream any more
        data[start : start + info.compress_size] = b"\xff" * info.compress_size
    else:  # one flipped byte: the data reads, its CRC-32 does not match
        data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("compression", "garbage", "reason"),
    [(zipfile.ZIP_STORED, False, "Bad CRC-32"), (zipfile.ZIP_DEFLATED, True, "decompressing")],
    ids=["bad_crc", "bad_deflate"],
)
def test_damaged_entry_is_one_clear_error_and_leaves_nothing(
    tmp_path: Path, compression: int, garbage: bool, reason: str
) -> None:
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", compression) as zf:
        for name, data in kaggle_like().items():
            zf.writestr(name, data)
    victim = "fer2013plus/test/happiness/fer12test.png"
    damage_entry(archive, victim, compression, garbage)
    with pytest.raises(DataError) as err:
        prepare_raw(str(archive), target=tmp_path / "data/raw")
    message = str(err.value)
    assert message.startswith(f"{archive}: entry {victim!r} is corrupt") and reason in message
    assert "fetch it again" in message and "\n" not in message
    assert leftovers(tmp_path / "data") == []
