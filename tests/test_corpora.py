"""The benchmark pair's text (`benchmarks/corpora.py`): whole-file deduplication, a held-out split by path hash
that other installed packages do not move, and out-of-domain prompts (headers, package documentation) that never
come from training files."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "corpora.py"
spec = importlib.util.spec_from_file_location("corpora", SCRIPT)
corpora = importlib.util.module_from_spec(spec)
sys.modules["corpora"] = corpora
spec.loader.exec_module(corpora)


@pytest.fixture
def site_packages(tmp_path, monkeypatch):
    roots = [tmp_path / "a" / "site-packages", tmp_path / "b" / "site-packages"]
    files = {roots[0] / "pkg" / f"m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(300)}
    files[roots[1] / "vendored" / "copy.py"] = files[roots[0] / "pkg" / "m7.py"]  # a duplicate, elsewhere
    files[roots[1] / "empty.py"] = "\n"
    files[roots[0] / "inc" / "big.h"] = "// licence\n" * 400 + "".join(f"int g{i}(void);\n" for i in range(600))
    files[roots[0] / "inc" / "small.hpp"] = "#pragma once\n"
    files[roots[1] / "big-1.0.dist-info" / "METADATA"] = ("Metadata-Version: 2.1\nName: big\n\n# big\n"
                                                          + "".join(f"Install step {i}.\n" for i in range(200)))
    files[roots[1] / "big" / "_vendor" / "x-1.0.dist-info" / "METADATA"] = "Name: x\n\n" + "Vendored.\n" * 200
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (roots[1] / "binary.py").write_bytes(b"\xff\xfe\x00bad")
    monkeypatch.setattr(corpora.site, "getsitepackages", lambda: [str(r) for r in roots])
    return roots


def test_python_files_are_deduplicated_and_split_by_path_hash(site_packages):
    train, heldout = corpora.python_split()
    assert len(train) + len(heldout) == 300  # the copy, the empty file and the undecodable one are dropped
    assert not set(train) & set(heldout)
    expected = {f"def f{i}():\n    return {i}\n" for i in range(300)
                if corpora.path_hash(f"pkg/m{i}.py") % corpora.HELD_OUT_EVERY == 0}
    assert set(heldout) == expected and 0 < len(heldout) < 30
    (site_packages[1] / "newpkg").mkdir()
    (site_packages[1] / "newpkg" / "z.py").write_text("x = 1\n")
    assert corpora.python_split()[1] == heldout  # another installed package does not move the split


def test_out_of_domain_prompts_come_from_headers_past_their_opening(site_packages):
    prompts = corpora.header_prompts(5, seed=0, chars=300)
    assert len(prompts) == 1  # only big.h is long enough
    assert prompts[0].startswith("int g") and len(prompts[0]) == 300
    assert "licence" not in corpora.header_prompts(1, seed=0, chars=300)[0]
    assert "#pragma once" in corpora.header_text(10**6) and "def f" not in corpora.header_text(10**6)


def test_second_out_of_domain_prompts_are_package_descriptions_without_their_header_fields(site_packages):
    assert corpora.package_descriptions() == ["# big\n" + "".join(f"Install step {i}.\n" for i in range(200))]
    prompts = corpora.docs_prompts(5, seed=0, chars=300)  # the vendored copy's METADATA is not a package's
    assert len(prompts) == 1 and prompts[0].startswith("Install step") and len(prompts[0]) == 300
    assert "Metadata-Version" not in corpora.docs_text(10**6) and "def f" not in corpora.docs_text(10**6)
