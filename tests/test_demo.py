"""`dynaspec-hf demo` end to end at a tiny size: every method's output is the target's, the table has τ per domain
and tokens/s, and target, drafter and assistant are saved where the README says."""

from transformers import AutoModelForCausalLM

from dynaspec_hf import DynaSpecAssistant
from dynaspec_hf.demo import run_demo


def test_demo_runs_saves_and_reports(tmp_path, capsys):
    rows = run_demo(str(tmp_path), steps=4, prompts=2, max_new_tokens=6)
    printed = capsys.readouterr()
    assert [row["method"] for row in rows][:2] == ["plain decoding", "transformers assisted generation, plain drafter"]
    assert len(rows) == 6 and all(row["exact"] == 4 for row in rows), rows
    assert all(set(row["tau"]) == {"held-out stdlib", "unseen codecs"} and row["tokens_per_s"] > 0 for row in rows)
    assert "| τ held-out stdlib | τ unseen codecs | tokens/s (both) |" in printed.out
    assert "it/s" not in printed.err, "progress bars on a stream that is not a terminal"
    assert isinstance(DynaSpecAssistant.from_pretrained(tmp_path / "assistant"), DynaSpecAssistant)
    for name in ("target", "drafter"):
        AutoModelForCausalLM.from_pretrained(tmp_path / name)
        assert (tmp_path / name / "tokenizer.json").is_file()
