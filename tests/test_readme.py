"""The README stays true: its two set-up commands, the CI script, the config reference, the paths it names."""

import re
from pathlib import Path

from lmfast.config import config_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _two_commands_section() -> str:
    return README.split("## Two commands", 1)[1].split("\n## ", 1)[0]


def test_readme_has_exactly_two_set_up_commands_install_and_train_then_install_and_test():
    blocks = re.findall(r"```bash\n(.*?)```", _two_commands_section(), flags=re.S)
    commands = [b.strip() for b in blocks]
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    train, test = commands
    assert train.startswith("pip install") and "python -m lmfast.train --config configs/quickstart.yaml" in train
    assert test.startswith("pip install") and test.endswith("python -m pytest")


def test_ci_script_runs_the_readmes_test_command():
    test = re.findall(r"```bash\n(.*?)```", _two_commands_section(), flags=re.S)[1].strip()
    assert test in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_readme_config_reference_is_the_schema():
    assert config_table() in README


def test_every_path_the_readme_names_exists():
    names = set(re.findall(r"\b((?:configs|benchmarks|tests|csrc|kernels|scripts)/[\w./-]+\.(?:yaml|py|sh|md|h|cpp))",
                           README))
    assert names, "the README names no repository files"
    missing = sorted(n for n in names if not (ROOT / n).exists() and "<" not in n)
    assert not missing, f"README names files that do not exist: {missing}"
