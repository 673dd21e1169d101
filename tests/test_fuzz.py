"""Fuzz: each entry script gets a few hundred randomly damaged small PNGs and tiles.csv files (seeded).

Every run must either succeed (exit 0, nothing on stderr but warnings) or exit 2 with exactly one
``error:`` line and no traceback, and must leave nothing that looks finished: no temporary, no index,
checkpoint or map from the failed work, and every map that is there decodes whole at its full size.
The scripts run in-process through ``run_cli`` (``_small_data.run_script``), on tiny files.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from _small_data import TEST_SRC, TRAIN_SRC, error_lines, fake_checkpoints, make_layout, run_script
from _train_fixtures import make_tiles
from cropmap.raster import raster_info, read_png, write_png

SEED = 11
TOKENS = ["abc", "-5", "", "../x.png", "/etc/passwd", "1.5", "nan", " 7", "99999", "image_9_0_0.png", "0", "a,b"]


# ---- damage -------------------------------------------------------------------------------------


def damage_png(data: bytes, rng: np.random.Generator, header: bool) -> tuple[bytes, str]:
    """Randomly damaged PNG bytes and what was done. ``header``: also rewrite IHDR fields with a valid
    checksum (a file that is well-formed but says something else; only for files decoded by libvips,
    see the note in :func:`cropmap.raster.png.check_bytes`)."""
    kinds = ["flip", "truncate", "append", "insert", "zero"] + (["header"] if header else [])
    kind = kinds[rng.integers(len(kinds))]
    b = bytearray(data)
    if kind == "flip":
        for pos in rng.integers(0, len(b), rng.integers(1, 9)):
            b[pos] ^= int(rng.integers(1, 256))
    elif kind == "truncate":
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == "append":  # bytes after IEND: readers ignore them, so must we
        b += rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
    elif kind == "insert":
        pos = int(rng.integers(0, len(b)))
        b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
    elif kind == "zero":
        pos, n = int(rng.integers(0, len(b))), int(rng.integers(1, 33))
        b[pos : pos + n] = bytes(len(b[pos : pos + n]))
    else:  # IHDR: another bit depth or colour type, checksum recomputed
        field = 24 + int(rng.integers(2))  # bit depth or colour type
        b[field] = int(rng.choice([1, 2, 4, 8, 16, 0, 3, 6]))
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b), kind


def damage_csv(text: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """Randomly damaged tiles.csv text (as bytes) and what was done."""
    lines = text.splitlines()
    kinds = ["field", "field", "drop_column", "fewer", "more", "flip", "truncate", "duplicate", "swap", "empty"]
    kind = kinds[rng.integers(len(kinds))]
    cells = [ln.split(",") for ln in lines]
    r = int(rng.integers(1, len(lines))) if len(lines) > 1 else 0
    if kind == "field":
        cells[r][int(rng.integers(len(cells[r])))] = TOKENS[rng.integers(len(TOKENS))]
    elif kind == "drop_column":
        del cells[0][int(rng.integers(len(cells[0])))]
    elif kind == "fewer":
        del cells[r][int(rng.integers(len(cells[r])))]
    elif kind == "more":
        cells[r].append("1")
    elif kind == "duplicate":
        cells.insert(r, list(cells[r]))
    elif kind == "swap" and len(cells) > 2:
        cells[1], cells[-1] = cells[-1], cells[1]
    elif kind == "empty":
        cells = cells[:1]
    out = ("\n".join(",".join(c) for c in cells) + "\n").encode()
    if kind == "flip":
        b = bytearray(out)
        for pos in rng.integers(0, len(b), rng.integers(1, 6)):
            b[pos] ^= int(rng.integers(1, 256))
        out = bytes(b)
    elif kind == "truncate":
        out = out[: int(rng.integers(0, len(out)))]
    return out, kind


def damage(path: Path, rng: np.random.Generator, header: bool = True) -> str:
    if path.suffix == ".csv":
        data, kind = damage_csv(path.read_text(), rng)
    else:
        data, kind = damage_png(path.read_bytes(), rng, header)
    path.write_bytes(data)
    return f"{path.name}: {kind}"


# ---- outcome checks -------------------------------------------------------------------------------


def outcome(rc: int, err: str, what: str) -> str:
    """'ok' or 'refused'; anything else (a traceback, several lines, another status) fails the test."""
    lines = error_lines(err)
    assert "Traceback" not in err, (what, err)
    if rc == 0:
        assert not lines, (what, err)  # success: nothing on stderr but warnings
        return "ok"
    assert rc == 2, (what, rc, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), (what, err)
    return "refused"


def no_temporaries(root: Path, what: str) -> None:
    left = [str(p) for p in root.rglob("*.part")]
    assert not left, (what, left)


def maps_are_whole(folder: Path, what: str) -> None:
    """Every PNG in ``folder`` decodes completely: nothing half-written under a final name."""
    for p in folder.glob("*.png") if folder.is_dir() else []:
        info = raster_info(p)
        assert read_png(p).shape[:2] == info.shape, (what, p)


# ---- the runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small layout: training images and test images, each with its label."""
    return make_layout(tmp_path_factory.mktemp("base") / "root", h=24, w=30)


def copy_case(base: Path, tmp_path: Path, i) -> Path:
    case = tmp_path / f"case{i}"
    shutil.copytree(base, case, symlinks=True)
    return case


def test_fuzz_tiling(base, tmp_path, capfd):
    rng = np.random.default_rng(SEED)
    seen = Counter()
    for i in range(80):
        case = copy_case(base, tmp_path, i)
        if i % 2 == 0:
            script, out = "generate_train_data", case / "train"
            files = [case / TRAIN_SRC / n for n in ("image_1.png", "image_1_label.png", "image_2.png",
                                                    "image_2_label.png")]
        else:
            script, out = "generate_test_data", case / "test"
            files = [case / TEST_SRC / n for n in ("image_3.png", "image_4.png")]
        what = f"case {i} {script} " + damage(files[rng.integers(len(files))], rng)
        rc, _, err = run_script(script, ["--data_root", str(case), "--tile_size", "16", "--quiet"], capfd)
        result = outcome(rc, err, what)
        seen[script, result] += 1
        no_temporaries(case, what)
        if result == "refused":
            assert not (out / "tiles.csv").exists(), what
            assert not [p for p in out.rglob("*.png")] if out.exists() else True, what
        else:
            assert (out / "tiles.csv").exists(), what
        shutil.rmtree(case)
    print(dict(seen))
    for script in ("generate_train_data", "generate_test_data"):
        assert seen[script, "ok"] and seen[script, "refused"], seen


def test_fuzz_predict(base, tmp_path, capfd, monkeypatch):
    rng = np.random.default_rng(SEED + 1)
    base = copy_case(base, tmp_path, "_windows")  # with test windows cut
    assert run_script("generate_test_data", ["--data_root", str(base), "--tile_size", "16", "--stride", "8",
                                             "--quiet"], capfd)[0] == 0
    fake_checkpoints(monkeypatch)
    seen = Counter()
    for i in range(60):
        case = copy_case(base, tmp_path, i)
        windows = sorted((case / "test").rglob("*.png"))
        target = case / "test" / "tiles.csv" if i % 2 else windows[rng.integers(len(windows))]
        what = f"case {i} predict " + damage(target, rng, header=False)  # windows are read by OpenCV
        rc, _, err = run_script("predict", ["--data_root", str(case), "--workers", "0", "--quiet"], capfd)
        seen[outcome(rc, err, what)] += 1
        no_temporaries(case, what)
        maps_are_whole(case / "submit", what)
        if rc == 0:
            assert (case / "submit" / "image_3_predict.png").exists() and (case / "submit" / "image_4_predict.png").exists()
        shutil.rmtree(case)
    print(dict(seen))
    assert seen["ok"] and seen["refused"], seen


def test_fuzz_maps(base, tmp_path, capfd):
    """vote.py, fill_hole.py and score.py on damaged maps, labels and sources."""
    rng = np.random.default_rng(SEED + 2)
    maps = {}
    for k in range(3):
        maps[k] = base / "submit" / f"image_3_predict_m{k}.png"
        write_png(maps[k], np.random.default_rng(k).integers(0, 4, (24, 30), dtype=np.uint8))
    seen = Counter()
    for i in range(120):
        case = copy_case(base, tmp_path, i)
        sub, csrc = case / "submit", case / TEST_SRC / "image_3.png"
        m = [sub / p.name for p in maps.values()]
        script = ("vote", "fill_hole", "score")[i % 3]
        if script == "vote":
            argv, files, out = ["--inputs", *map(str, m), "--output", str(sub / "v.png")], m, sub / "v.png"
        elif script == "fill_hole":
            argv = ["--input", str(m[0]), "--source", str(csrc), "--output", str(sub / "f.png"), "--max_hole", "50"]
            files, out = [m[0], csrc], sub / "f.png"
        else:
            label = csrc.with_name("image_3_label.png")
            argv = ["--pred", str(m[0]), "--label", str(label), "--source", str(csrc), "--json", str(sub / "s.json")]
            files, out = [m[0], label, csrc], sub / "s.json"
        what = f"case {i} {script} " + damage(files[rng.integers(len(files))], rng)
        rc, _, err = run_script(script, [*argv, "--quiet"], capfd)
        result = outcome(rc, err, what)
        seen[script, result] += 1
        no_temporaries(case, what)
        assert out.exists() == (result == "ok"), what
        if out.suffix == ".png" and out.exists():
            maps_are_whole(sub, what)
        shutil.rmtree(case)
    print(dict(seen))
    for script in ("vote", "fill_hole", "score"):
        assert seen[script, "ok"] and seen[script, "refused"], seen


def test_fuzz_training(tmp_path, capfd):
    """A few training runs on damaged tiles and tiles.csv (each builds a model, so only a few)."""
    threads = torch.get_num_threads()
    rng = np.random.default_rng(SEED + 3)
    base = make_tiles(tmp_path / "base", n_train=4, n_val=2, size=32)
    seen = Counter()
    try:
        for i in range(8):
            case = tmp_path / f"case{i}"
            shutil.copytree(base, case)
            tiles = sorted((case / "train").rglob("*.png"))
            target = case / "train" / "tiles.csv" if i % 2 else tiles[rng.integers(len(tiles))]
            what = f"case {i} train " + damage(target, rng, header=False)
            argv = ["--train", "--data_root", str(case), "--backbone", "resnet18", "--device", "cpu", "--workers", "0",
                    "--threads", "1", "--quiet", "--batch_size", "2", "--crop_size", "32", "--epochs", "1",
                    "--iters_per_epoch", "2", "--exp", "f"]
            rc, _, err = run_script("train", argv, capfd)
            result = outcome(rc, err, what)
            seen[result] += 1
            no_temporaries(case, what)
            saved = sorted(p.name for p in (case / "model").glob("*.pth")) if (case / "model").exists() else []
            assert bool(saved) == (result == "ok"), (what, saved)
            shutil.rmtree(case)
    finally:
        torch.set_num_threads(threads)
    print(dict(seen))
    assert seen["refused"], seen
