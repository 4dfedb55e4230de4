"""A damaged model file is bad input like any other: a sentence naming the file, exit code 2, no traceback."""

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tcae
from tcae.cli.main import main as cli


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    path = tmp_path / "model"
    tcae.create_model("tcae-tiny", image_size=32).save_pretrained(path)
    return path


def _corrupt_header(weights: Path) -> None:
    """A safetensors file starts with its header length (u64, little endian): point it past the end."""
    data = bytearray(weights.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 10)
    weights.write_bytes(bytes(data))


def test_from_pretrained_names_a_damaged_weights_file(model_dir):
    weights = model_dir / "model.safetensors"
    _corrupt_header(weights)
    with pytest.raises(ValueError, match="model.safetensors .* is not a readable safetensors file"):
        tcae.TCAE.from_pretrained(model_dir)


def test_from_pretrained_names_a_truncated_weights_file(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged or incomplete"):
        tcae.TCAE.from_pretrained(model_dir)


def test_from_pretrained_names_a_damaged_config(model_dir):
    (model_dir / "config.json").write_text('{"patch_size": 4,')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        tcae.TCAE.from_pretrained(model_dir)


def test_reconstruct_with_a_damaged_weights_file_exits_2(model_dir, tmp_path, capsys):
    _corrupt_header(model_dir / "model.safetensors")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    out = tmp_path / "rec"
    assert cli(["reconstruct", "--model", str(model_dir), "--data", str(image), "--out", str(out),
                "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(model_dir / "model.safetensors") in err and "Traceback" not in err and "SafetensorError" not in err
    assert not out.exists()
