"""The README's `fedrsclip` commands are the CLI's: each one parses (every option exists, every choice is valid),
so a renamed option (`data partition --clients`) or a missing one (`run --rounds`) cannot stay in the manual.
The commands that run offline run in the tests that own them (printed simulator commands, the provisioning job,
the demo); this file checks the rest at least parse as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fedrsclip.cli import build_parser
from helpers import REPO

README = REPO / "README.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def readme_commands() -> list[str]:
    """Every `fedrsclip ...` line of the README's bash blocks, continuation lines joined, comments dropped, the
    block's shell variables (REAL=..., GRID=..., a for loop's variable) put in."""
    commands = []
    for block in _blocks(README.read_text(encoding="utf-8")):
        joined = re.sub(r"\\\n\s*", " ", block)
        variables = {name: value for name, value in re.findall(r'^(\w+)="(.*?)"$', joined, flags=re.M)}
        for name, values in re.findall(r"^for (\w+) in ([^;]+);", joined, flags=re.M):
            variables[name] = values.split()[0]
        for line in joined.splitlines():
            line = line.strip()
            if not line.startswith("fedrsclip "):
                continue
            words = shlex.split(line, comments=True)
            expanded = []
            for word in words:
                if "$" not in word:
                    expanded.append(word)
                    continue
                for name, value in variables.items():
                    word = word.replace(f"${name}", value)
                expanded.extend(shlex.split(word))  # a variable holding several options
            commands.append(shlex.join(expanded))
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) > 30
    assert any(c.startswith("fedrsclip zeroshot ") for c in COMMANDS)
    assert any(c.startswith("fedrsclip experiment ") and "--set model.arch=ViT-B-16" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command, capsys):
    words = shlex.split(command)[1:]
    try:
        build_parser().parse_args(words)
    except SystemExit as stop:
        assert stop.code == 0 and "--help" in words, f"{command}\n{capsys.readouterr().err}"


def test_the_environments_tensorboard_starts():
    """README, TensorBoard: `tensorboard` of .venv runs (2.20.0 imported pkg_resources, which setuptools dropped)."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("tensorboard")), "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
