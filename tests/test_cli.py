"""`dynaspec-hf calibrate` end to end on tiny models saved to disk, and its errors on bad input."""

import json

import pytest
import torch

from dynaspec_hf import DynaSpecAssistant
from dynaspec_hf.cli import main
from dynaspec_hf.demo import llama_pair, train_tokenizer

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n\n" * 3


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tokenizer = train_tokenizer([TEXT], vocab_size=300)
    torch.manual_seed(0)
    target, drafter = llama_pair(len(tokenizer), 64, 2, 64, 1)
    for model, name in ((target, "target"), (drafter, "drafter")):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "code.txt").write_text(TEXT)
    (root / "chat.jsonl").write_text("\n".join(json.dumps({"text": TEXT[i:]}) for i in range(0, 60, 6)))
    return root


def test_calibrate_cli_end_to_end(saved_pair, tmp_path):
    out = tmp_path / "assistant"
    main(["calibrate", "--target", str(saved_pair / "target"), "--drafter", str(saved_pair / "drafter"),
          "--data", str(saved_pair / "code.txt"), str(saved_pair / "chat.jsonl"), "--out", str(out),
          "--num-clusters", "8", "--router-hidden-size", "16", "--epochs", "2", "--cache-dir", str(tmp_path / "c")])
    assert len(list((tmp_path / "c").glob("*/train_features.pt"))) == 1
    report = json.loads((out / "calibration_report.json").read_text())
    assert set(report["curves"]["domains"]) >= {"all"}
    assert (out / "README.md").read_text().count("DynaSpec recall") == 1
    assistant = DynaSpecAssistant.from_pretrained(out)
    split = report["splits"]["1"]  # 1/16 of 8 clusters: the nearest size is 1 cluster
    assert (assistant.config.k_by_position, assistant.config.core_by_position) == ([split["k"]], [split["core"]])
    assert "The sampling band:" in (out / "README.md").read_text()


@pytest.mark.parametrize("content, message", [("", "No text found"), ("{not json\n", "is not valid JSON"),
                                              ('{"other": 1}\n', "none of the fields")])
def test_calibrate_cli_bad_data_leaves_nothing(saved_pair, tmp_path, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        main(["calibrate", "--target", str(saved_pair / "target"), "--drafter", str(saved_pair / "drafter"),
              "--data", str(data), "--out", str(out), "--num-clusters", "8", "--cache-dir", str(tmp_path / "c")])
    assert not out.exists()


def test_calibrate_cli_missing_file(saved_pair, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["calibrate", "--target", str(saved_pair / "target"), "--drafter", str(saved_pair / "drafter"),
              "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path)])
