"""The README's command lines work (as litgpt's test_readme.py does for its README).

Every `sumrl ...` command the README shows (in code blocks, and inline in backticks with flags) is
parsed by the real parser, so a renamed or removed flag fails here. The examples block is then run
for real, in order, in an empty folder, with the cheap substitutions a test needs: the tiny random
model for `--model default`, 4 new tokens, no embedding metrics, few bootstrap resamples, token counts
of one split.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sumrl.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
# Appended to the commands that load the model (sizes, never behaviour): `data stats` counts tokens
# of the test split only (100 papers; all 972 take minutes on CPU).
CHEAP = {"data": ["--split", "test"], "eval": ["--max-new-tokens", "4", "--no-semantic", "--n-bootstrap", "10"],
         "summarize": ["--max-new-tokens", "4"]}


def _block_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith((".venv/bin/sumrl ", "sumrl ")):
                out.append(shlex.split(line)[1:])
    return out


def _inline_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    return [shlex.split(c)[1:] for c in re.findall(r"`(sumrl [^`]*--[^`]*)`", text)]


def test_readme_shows_commands():
    assert len(_block_commands()) >= 4 and _inline_commands()


@pytest.mark.parametrize("argv", _block_commands() + _inline_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv):
    args = build_parser().parse_args(argv)  # unknown flags / choices exit here
    assert callable(args.func)


@pytest.mark.slow  # ~30 s on the 2-core CPU (the scisummnet test split tokenised, 5 papers generated and scored)
def test_readme_examples_run(tmp_path, monkeypatch, tiny_model_dir, capsys):
    monkeypatch.chdir(tmp_path)
    long_doc = " ".join(f"Sentence {k} says something about the report." for k in range(120))
    (tmp_path / "my_reports.jsonl").write_text(
        '{"id": "r1", "document": "A short report. It has two sentences."}\n'
        f'{{"id": "r2", "document": "{long_doc}"}}\n', encoding="utf-8")
    commands = _block_commands()
    assert [c[0] for c in commands] == ["data", "eval", "eval", "summarize"]
    for argv in commands:
        argv = [str(tiny_model_dir) if a == "default" and argv[k - 1] == "--model" else a for k, a in enumerate(argv)]
        argv += CHEAP.get(argv[0], []) if "--model" in argv else []
        assert main(argv) == 0, f"README command failed: sumrl {' '.join(argv)}\n{capsys.readouterr().err}"
    assert (tmp_path / "runs/base/metrics.json").is_file() and (tmp_path / "runs/base-cleaned/metrics.json").is_file()
    assert len((tmp_path / "summaries.jsonl").read_text(encoding="utf-8").splitlines()) == 2
