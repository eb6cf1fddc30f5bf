"""The benchmark pair's text, defined once for the recipe (training, held-out perplexity) and the benchmark (prompts).

- Training domains: every Python file in the installed site-packages (docstrings and comments bring English), plus
  the shared wikitext-2, tinyshakespeare and GSM8K text. Files are read in path order and deduplicated whole; a file
  is held out when a hash of its path (relative to site-packages) says so, so the split does not depend on which
  other packages are installed.
- Out of domain: C and C++ headers from the same site-packages (`*.h`, `*.hpp`, `*.cuh`: torch, CUDA, numpy...).
  No header is read for training, for the tokenizer, for calibration or for the frequency counts.
"""

from __future__ import annotations

import hashlib
import json
import random
import site
from pathlib import Path

HELD_OUT_EVERY = 50  # one file in 50, by path hash
PYTHON = ("*.py",)
HEADERS = ("*.h", "*.hpp", "*.cuh")
OUT_OF_DOMAIN = "cpp_headers"


def _path_hash(relative: str) -> int:
    return int.from_bytes(hashlib.sha1(relative.encode()).digest()[:8], "little")


def site_package_files(patterns: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path relative to its site-packages, text) of every matching UTF-8 file, in path order, duplicates dropped."""
    paths = []
    for root in map(Path, site.getsitepackages()):
        for pattern in patterns:
            paths += [(str(p.relative_to(root)), p) for p in root.rglob(pattern) if p.is_file()]
    files, seen = [], set()
    for relative, path in sorted(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        digest = hashlib.sha1(text.encode()).digest()
        if text.strip() and digest not in seen:
            seen.add(digest)
            files.append((relative, text))
    if not files:
        raise FileNotFoundError(f"No {', '.join(patterns)} files found under {site.getsitepackages()}.")
    return files


def python_split() -> tuple[list[str], list[str]]:
    """(training, held-out) Python files of site-packages."""
    train, heldout = [], []
    for relative, text in site_package_files(PYTHON):
        (heldout if _path_hash(relative) % HELD_OUT_EVERY == 0 else train).append(text)
    return train, heldout


def shared_text(data: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(training, held-out) documents of the shared text domains."""
    shakespeare = (data / "tinyshakespeare" / "input.txt").read_text()
    cut = int(len(shakespeare) * 0.9)
    gsm = lambda name: [f"{r['question']}\n{r['answer']}"  # noqa: E731
                        for r in map(json.loads, (data / "gsm8k" / name).read_text().splitlines())]
    train = {"wikitext": [(data / "wikitext2" / "valid.txt").read_text()], "shakespeare": [shakespeare[:cut]],
             "gsm8k": gsm("train.jsonl")}
    heldout = {"wikitext": [(data / "wikitext2" / "test.txt").read_text()], "shakespeare": [shakespeare[cut:]],
               "gsm8k": gsm("test.jsonl")}
    return train, heldout


def header_prompts(count: int, seed: int, chars: int = 2000) -> list[str]:
    """`count` out-of-domain prompts: a seeded sample of headers of ≥ 3 × `chars` characters, each cut from a third
    of the way in (past the licence text most headers open with), starting on a line boundary."""
    files = [text for _, text in site_package_files(HEADERS) if len(text) >= 3 * chars]
    prompts = []
    for text in random.Random(seed).sample(files, min(count, len(files))):
        start = text.find("\n", len(text) // 3) + 1
        prompts.append(text[start : start + chars])
    return prompts


def header_text(max_chars: int) -> str:
    """Out-of-domain text for perplexity: headers in path order up to `max_chars`."""
    texts, total = [], 0
    for _, text in site_package_files(HEADERS):
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n".join(texts)
