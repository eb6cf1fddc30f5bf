"""The `dynaspec-hf` command: `demo` (embedded default, no downloads), `calibrate` (your own pair) and `bench`
(which way of generating is fastest on this machine).

Mistakes in what the user passed (a missing file or model, bad data, a non-empty output folder) print one line;
`--debug` shows the traceback."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

USER_ERRORS = (ValueError, OSError)  # OSError: missing files and folders, a folder in the way, an unloadable model


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, except where there is none to show (required, or said in words)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.required else super()._get_help_string(action)


class StrictFailure(Exception):
    """`calibrate --strict` found the assistant unlikely to speed generation up."""


def read_texts(paths: list[str], tokenizer=None) -> tuple[list[str], list[str]]:
    """Texts and their domain (the file's stem) from .txt (blank-line separated) and .jsonl files.

    A jsonl record may hold `text`, chat `messages` (rendered with the tokenizer's chat template) or Spec-Bench
    style `turns`.
    """
    texts, domains = [], []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"Calibration data file {name!r} does not exist.")
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for number, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{name}:{number} is not valid JSON ({error}).") from error
                texts.append(_record_text(record, tokenizer, f"{name}:{number}"))
                domains.append(path.stem)
        else:
            for block in raw.split("\n\n"):
                if block.strip():
                    texts.append(block)
                    domains.append(path.stem)
    if not texts:
        raise ValueError(f"No text found in {paths}.")
    return texts, domains


def _record_text(record: dict, tokenizer, where: str) -> str:
    if "text" in record:
        return record["text"]
    if "messages" in record:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{where} holds chat `messages` but the tokenizer has no chat template.")
        return tokenizer.apply_chat_template(record["messages"], tokenize=False)
    if "turns" in record:
        return "\n".join(record["turns"])
    raise ValueError(f"{where} has none of the fields `text`, `messages` or `turns`.")


def calibrate_command(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .calibrate import calibrate
    from .report import calibration_summary, plot_curves

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty.")
    from accelerate import PartialState

    tokenizer = load_pretrained(AutoTokenizer, args.target, "--target")
    texts, domains = read_texts(args.data, tokenizer)
    placement = device_and_dtype(args)
    target = load_pretrained(AutoModelForCausalLM, args.target, "--target", **placement)
    drafter = load_pretrained(AutoModelForCausalLM, args.drafter, "--drafter", **placement)
    if len(tokenizer) > drafter.config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the drafter's vocabulary has "
                         f"{drafter.config.vocab_size}.")
    sequences = [torch.tensor(ids[: args.max_length]) for ids in tokenizer(texts)["input_ids"]]
    keep = [i for i, s in enumerate(sequences) if len(s) >= 2]
    if not keep:
        raise ValueError("Every text is shorter than 2 tokens: no (context, next token) pair to learn from.")
    assistant, report = calibrate(
        target, drafter, [sequences[i] for i in keep], domains=[domains[i] for i in keep],
        num_clusters=args.num_clusters, core_size=args.core_size, router_hidden_size=args.router_hidden_size,
        continuation_tokens=args.continuation_tokens, objective=args.objective, epochs=args.epochs, seed=args.seed,
        cache_dir=_feature_cache_dir(args),
    )
    if not PartialState().is_main_process:
        return  # every process holds the same assistant (same gathered features, same seed); one writes it
    report["data"] = {Path(name).name: domains.count(Path(name).stem) for name in args.data}  # texts per file
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as staging:
        staging = Path(staging) / "assistant"
        assistant.save_pretrained(staging)  # weights, config, calibration_report.json and the model card
        plotted = "curves" in report and plot_curves(report["curves"], staging / "calibration_recall.png")
        out.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            shutil.move(str(item), out / item.name)
    table, warning = calibration_summary(report, assistant)
    print(table)
    print(f"\nsaved the calibrated assistant to {out} (calibration_report.json holds every number)")
    if "curves" in report and not plotted:
        print("no calibration_recall.png: matplotlib is not installed (pip install 'dynaspec-hf[plot]')")
    if warning is not None:
        print(f"WARNING: {warning}", file=sys.stderr)
        if args.strict:
            raise StrictFailure("--strict: the calibrated assistant is unlikely to speed generation up (see the "
                                "warning above).")


def device_and_dtype(args) -> dict:
    """`from_pretrained` placement: `--device` (default: this process's accelerate device, a GPU where there is
    one) and `--dtype` (default: bfloat16 on a GPU, float32 on the CPU)."""
    import torch
    from accelerate import PartialState

    device = args.device or str(PartialState().device)  # under `accelerate launch`: this process's GPU
    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() and not device.startswith("cpu") else "float32")
    return dict(dtype=dtype, device_map=device)


def bench_command(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .bench import bench, bench_table
    from .demo import stdlib_texts
    from .modeling_dynaspec import DynaSpecAssistant

    tokenizer = load_pretrained(AutoTokenizer, args.target, "--target")
    texts = read_texts(args.prompts, tokenizer)[0] if args.prompts else stdlib_texts(200_000)
    prompts = [ids[: args.prompt_tokens] for ids in tokenizer(texts, return_tensors=None)["input_ids"]
               if len(ids) >= args.prompt_tokens][: args.num_prompts]
    if not prompts:
        raise ValueError(f"No prompt has {args.prompt_tokens} tokens: pass longer texts or a smaller --prompt-tokens.")
    placement = device_and_dtype(args)
    target = load_pretrained(AutoModelForCausalLM, args.target, "--target", **placement)
    assistant = load_pretrained(AutoModelForCausalLM, args.assistant, "--assistant", **placement)
    if not isinstance(assistant, DynaSpecAssistant):
        raise ValueError(f"--assistant {args.assistant} is a {type(assistant).__name__}, not a DynaSpec assistant: "
                         f"make one from that drafter with `dynaspec-hf calibrate --drafter {args.assistant} ...`.")
    drafter = args.drafter and load_pretrained(AutoModelForCausalLM, args.drafter, "--drafter", **placement)
    rows = bench(target, assistant, [torch.tensor(ids) for ids in prompts], drafter=drafter,
                 max_new_tokens=args.max_new_tokens)
    print(f"\n{len(prompts)} prompts of {args.prompt_tokens} tokens, {args.max_new_tokens} new tokens each, greedy, "
          f"{placement['dtype']} on {target.device}:\n")
    print(bench_table(rows))


def load_pretrained(auto_class, name: str, option: str, **kwargs):
    """`auto_class.from_pretrained(name)`, with errors that say whether `name` was read as a local folder or a Hub
    model, and how to fail at once without a network."""
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"{option} {name}: no such local folder.")
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except OSError as error:
        if Path(name).expanduser().is_dir():
            raise OSError(f"{option} {name}: the folder holds no loadable model ({error}).") from error
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        hint = ("HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched" if offline else
                "without a network, set HF_HUB_OFFLINE=1 to fail at once instead of retrying the Hub")
        raise OSError(f"{option} {name}: neither a local folder nor a model this machine can load from the Hub "
                      f"or its cache ({hint}).") from error


def _feature_cache_dir(args) -> Path:
    """One folder per (models, data, settings) under the Hugging Face cache: a rerun resumes collection there."""
    import hashlib

    from huggingface_hub import constants

    digest = hashlib.sha256()
    for part in (args.target, args.drafter, args.max_length, args.continuation_tokens, args.seed):
        digest.update(str(part).encode())
    for name in args.data:
        digest.update(Path(name).read_bytes())
    return Path(args.cache_dir or Path(constants.HF_HOME) / "dynaspec_hf" / "features") / digest.hexdigest()[:16]


def main(argv=None) -> None:
    from .calibrate import OBJECTIVES

    defaults = _HelpWithDefaults
    parser = argparse.ArgumentParser(prog="dynaspec-hf", description=__doc__, formatter_class=defaults)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a small pair on embedded text and compare drafting methods",
                               formatter_class=defaults)
    demo.add_argument("--out", default="dynaspec-demo", help="folder for the trained pair and the results")
    demo.add_argument("--steps", type=int, default=300, help="training steps for the target and the drafter")
    demo.add_argument("--prompts", type=int, default=8, help="held-out prompts the comparison generates for")
    cal = commands.add_parser(
        "calibrate", help="build clusters, train the router and save a DynaSpec assistant "
        "(data-parallel under `accelerate launch` / torchrun)", formatter_class=defaults)
    bench = commands.add_parser(
        "bench", help="time plain decoding, transformers' assisted generation and DynaSpec's loops on your pair, "
        "and say which to use on this machine", formatter_class=defaults)
    for command in (cal, bench):
        command.add_argument("--target", required=True, help="the target: a local folder or a Hub model id")
        command.add_argument("--dtype", default=None,
                             help="dtype the models load in (auto: their config's); default: bfloat16 on CUDA, else "
                                  "float32")
        command.add_argument("--device", default=None,
                             help="device_map for the models (e.g. cuda:0, cpu, auto); default: this process's "
                                  "accelerate device (a GPU where there is one)")
    cal.add_argument("--drafter", required=True,
                     help="the drafter, a causal LM with the target's tokenizer: a local folder or a Hub model id")
    cal.add_argument("--data", nargs="+", required=True,
                     help=".txt (blank-line-separated texts) or .jsonl (text / messages / turns) files; each file "
                          "is one domain of the report")
    cal.add_argument("--out", required=True, help="folder for the assistant (must be empty or absent)")
    cal.add_argument("--num-clusters", type=int, default=256,
                     help="token clusters the vocabulary is split into; the router picks some per draft step")
    cal.add_argument("--core-size", type=int, default=0,
                     help="most frequent tokens always in the shortlist (FR-Spec's static list); 0: none")
    cal.add_argument("--router-hidden-size", type=int, default=256, help="the router's hidden layer width")
    cal.add_argument("--continuation-tokens", type=int, default=0,
                     help="tokens the target generates after each text, so the router also learns from the "
                          "target's own continuations")
    cal.add_argument("--max-length", type=int, default=512, help="tokens kept per text")
    cal.add_argument("--objective", choices=OBJECTIVES, default="mass",
                     help="router target: the target's probability mass per cluster, or its greedy token's cluster")
    cal.add_argument("--epochs", type=int, default=4, help="router training epochs")
    cal.add_argument("--seed", type=int, default=0, help="seed of the clusters, the held-out split and training")
    cal.add_argument("--cache-dir", default=None, help="where collected features are kept (default: HF_HOME)")
    bench.add_argument("--assistant", required=True, help="the DynaSpec assistant: a local folder or a Hub model id")
    bench.add_argument("--drafter", default=None,
                       help="the plain drafter, for transformers' assisted generation as a baseline (optional)")
    bench.add_argument("--prompts", nargs="*", default=None,
                       help=".txt or .jsonl files of prompts (as calibrate reads them); default: a built-in sample "
                            "of Python standard-library source")
    bench.add_argument("--num-prompts", type=int, default=8, help="prompts to time")
    bench.add_argument("--prompt-tokens", type=int, default=64, help="tokens kept per prompt")
    bench.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per prompt")
    cal.add_argument("--strict", action="store_true",
                     help="exit with status 1 when the drafter agrees too little with the target for speculation "
                          "to pay (the assistant is saved either way)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.out, steps=args.steps, prompts=args.prompts)
        elif args.command == "bench":
            bench_command(args)
        else:
            calibrate_command(args)
    except (*USER_ERRORS, StrictFailure) as error:
        if args.debug:
            raise
        raise SystemExit(f"dynaspec-hf: error: {error}") from None


if __name__ == "__main__":
    main()
