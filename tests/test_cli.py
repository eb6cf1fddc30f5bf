"""`dynaspec-hf calibrate` end to end on tiny models saved to disk, and its errors on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def calibrate_args(saved_pair, tmp_path, drafter="drafter", *extra):
    return ["calibrate", "--target", str(saved_pair / "target"), "--drafter", str(saved_pair / drafter),
            "--data", str(saved_pair / "code.txt"), str(saved_pair / "chat.jsonl"), "--out", str(tmp_path / "assistant"),
            "--num-clusters", "8", "--router-hidden-size", "16", "--epochs", "2", "--cache-dir", str(tmp_path / "c"),
            *extra]


def test_calibrate_cli_end_to_end(saved_pair, tmp_path, capsys):
    """An untrained drafter: calibration saves the assistant, prints the summary and warns that it will not pay."""
    out = tmp_path / "assistant"
    main(calibrate_args(saved_pair, tmp_path))
    printed = capsys.readouterr()
    assert "| full vocabulary | 289 |" in printed.out and "| static frequency shortlist of the same size |" in printed.out
    assert "WARNING: The drafter agrees with the target on only" in printed.err
    assert len(list((tmp_path / "c").glob("*/train_features.pt"))) == 1
    report = json.loads((out / "calibration_report.json").read_text())
    assert set(report["curves"]["domains"]) >= {"all"}
    assert (out / "README.md").read_text().count("DynaSpec recall") == 1
    assistant = DynaSpecAssistant.from_pretrained(out)
    split = report["splits"]["1"]  # 1/16 of 8 clusters: the nearest size is 1 cluster
    assert (assistant.config.k_by_position, assistant.config.core_by_position) == ([split["k"]], [split["core"]])
    assert "The sampling band:" in (out / "README.md").read_text()


def test_publishing_keeps_the_card_and_the_report(saved_pair, tmp_path, monkeypatch):
    """The folder calibrate writes, a load -> save round trip of it and the folder `push_to_hub` hands to
    huggingface_hub for upload hold the same model card and calibration report, byte for byte; the card names
    the target and the data."""
    import huggingface_hub

    main(calibrate_args(saved_pair, tmp_path))
    out = tmp_path / "assistant"
    card = (out / "README.md").read_text()
    target = str(saved_pair / "target")
    assert f'AutoModelForCausalLM.from_pretrained("{target}")' in card and "`code.txt` (" in card
    assert "| calibrated for the target | " in card and "289 tokens" in card and "DynaSpec recall" in card
    loaded = DynaSpecAssistant.from_pretrained(out)
    assert loaded.calibration_report["target"]["name_or_path"] == target
    loaded.save_pretrained(tmp_path / "again")
    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update({path.name: path.read_bytes() for path in Path(folder_path).iterdir()})

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kwargs: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    loaded.push_to_hub("someone/my-assistant")
    for name in ("README.md", "calibration_report.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes() == uploaded[name], name
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(uploaded)


def test_calibrate_cli_strict(saved_pair, tmp_path, capsys):
    """`--strict` fails on the useless drafter (after saving it) and passes on a drafter that is the target."""
    with pytest.raises(SystemExit, match="--strict: the calibrated assistant is unlikely to speed generation up"):
        main(calibrate_args(saved_pair, tmp_path, "drafter", "--strict"))
    assert (tmp_path / "assistant" / "calibration_report.json").is_file()
    capsys.readouterr()
    good = tmp_path / "good"
    main(calibrate_args(saved_pair, good, "target", "--strict"))
    printed = capsys.readouterr()
    assert "WARNING" not in printed.err and "| full vocabulary | 289 | 1.000 | 7.00 |" in printed.out


@pytest.mark.parametrize("content, message", [("", "No text found"), ("{not json\n", "is not valid JSON"),
                                              ('{"other": 1}\n', "none of the fields")])
def test_calibrate_cli_bad_data_leaves_nothing(saved_pair, tmp_path, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=f"^dynaspec-hf: error: .*{message}"):
        main(["calibrate", "--target", str(saved_pair / "target"), "--drafter", str(saved_pair / "drafter"),
              "--data", str(data), "--out", str(out), "--num-clusters", "8", "--cache-dir", str(tmp_path / "c")])
    assert not out.exists()
    with pytest.raises(ValueError, match=message):  # --debug: the exception itself, with its traceback
        main(["--debug", "calibrate", "--target", str(saved_pair / "target"), "--drafter",
              str(saved_pair / "drafter"), "--data", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "c")])


def test_calibrate_cli_missing_inputs(saved_pair, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["calibrate", "--target", str(saved_pair / "target"), "--drafter", str(saved_pair / "drafter"),
              "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--drafter ./no-such-drafter: no such local folder"):
        main(["calibrate", "--target", str(saved_pair / "target"), "--drafter", "./no-such-drafter",
              "--data", str(saved_pair / "code.txt"), "--out", str(tmp_path / "out")])


def test_missing_hub_model_fails_at_once_offline():
    """With HF_HUB_OFFLINE set, a name in neither a folder nor the cache fails without touching the network, and
    the message says what was searched."""
    script = ("import time\nfrom transformers import AutoTokenizer\nfrom dynaspec_hf.cli import load_pretrained\n"
              "start = time.perf_counter()\ntry:\n    load_pretrained(AutoTokenizer, 'nobody/no-such-model', '--target')\n"
              "except OSError as error:\n    print(error)\nprint(time.perf_counter() - start)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    message, seconds = done.stdout.strip().splitlines()
    assert "neither a local folder nor a model" in message and "HF_HUB_OFFLINE is set" in message
    assert float(seconds) < 1.0


def test_every_option_has_help_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = capsys.readouterr().out
    for option in ("--num-clusters", "--core-size", "--continuation-tokens", "--max-length", "--epochs", "--strict"):
        assert option in text
    assert "(default: 256)" in text and "(default: 512)" in text and "(default: 4)" in text


def test_examples_run_on_the_cpu(saved_pair, tmp_path):
    """The README's examples as a user runs them, on a tiny pair: calibrate_your_pair.sh with the CLI's device and
    dtype defaults, then quickstart.py with the assistant it wrote."""
    root = Path(__file__).resolve().parents[1] / "examples"
    out = tmp_path / "assistant"
    env = {**os.environ, "TARGET": str(saved_pair / "target"), "DRAFTER": str(saved_pair / "drafter"),
           "OUT": str(out), "NUM_CLUSTERS": "8", "CONTINUATION_TOKENS": "4", "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(root / "calibrate_your_pair.sh"), str(saved_pair / "code.txt")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"saved the calibrated assistant to {out}" in done.stdout
    done = subprocess.run([sys.executable, str(root / "quickstart.py"), str(saved_pair / "target"), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "identical to the target alone: True" in done.stdout


def test_bench_prints_every_method_and_a_recommendation(saved_pair, tmp_path, capsys):
    main(calibrate_args(saved_pair, tmp_path, "target"))  # a drafter equal to the target: every draft is accepted
    capsys.readouterr()
    main(["bench", "--target", str(saved_pair / "target"), "--assistant", str(tmp_path / "assistant"),
          "--drafter", str(saved_pair / "target"), "--prompts", str(saved_pair / "code.txt"),
          "--num-prompts", "2", "--prompt-tokens", "8", "--max-new-tokens", "12"])
    table = capsys.readouterr().out
    for method in ("plain decoding", "plain decoding, static cache (torch.compile on CUDA)",
                   "transformers assisted generation, plain drafter",
                   "DynaSpec assistant in transformers' loop", "dynaspec_hf.generate, chain of 6 (default)",
                   "dynaspec_hf.generate, automatic shape"):
        assert f"| {method} | " in table, method
    assert table.count("| 2/2 |") == 6, "every method must reproduce plain greedy decoding"
    assert "| plain decoding | 1.00 |" in table and "here:" in table
    with pytest.raises(SystemExit, match="is a LlamaForCausalLM, not a DynaSpec assistant"):
        main(["bench", "--target", str(saved_pair / "target"), "--assistant", str(saved_pair / "drafter")])
