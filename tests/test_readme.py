"""The README stays true: its two set-up commands, the CI script, the config reference, the paths it names, and
every performance figure, which must appear in the benchmark results file its row cites."""

import re
from pathlib import Path

from lmfast.train.config import config_table

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
    folders = "configs|benchmarks|tests|csrc|kernels|scripts|lmfast"
    names = set(re.findall(rf"\b((?:{folders})/[\w./-]+\.(?:yaml|py|sh|md|h|cpp))", README))
    assert names, "the README names no repository files"
    missing = sorted(n for n in names if not (ROOT / n).exists() and "<" not in n)
    assert not missing, f"README names files that do not exist: {missing}"


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _performance_rows() -> list[tuple[str, list[str], str]]:
    """(what, [lmfast, peer, ratio] cells, source) of each row of the Performance table; "same" resolved."""
    section = README.split("## Performance", 1)[1].split("\n## ", 1)[0]
    rows, source = [], ""
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("what", "---"):
            continue
        source = source if cells[5] == "same" else cells[5]
        rows.append((cells[0], cells[1:4], source))
    return rows


def _in_results(figure: str, numbers: list[str]) -> bool:
    """``figure`` as the README writes it equals a number of the results file rounded to the same decimals."""
    value, decimals = float(figure.replace(",", "")), len(figure.partition(".")[2])
    return any(abs(round(float(n.replace(",", "")), decimals) - value) < 0.5 * 10**-decimals / 100 for n in numbers)


def test_every_performance_figure_is_in_the_clean_results_file_its_row_cites():
    rows = [r for r in _performance_rows() if "benchmarks/results/" in r[2]]
    assert len(rows) >= 8, "the Performance table lost its benchmark rows"
    for what, cells, source in rows:
        (path,) = re.findall(r"`(benchmarks/results/[\w./-]+\.md)`", source)
        text = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(r"^(CPU|Machine): ", text, flags=re.M), f"{path} does not name its CPU"
        assert "Command: `" in text, f"{path} does not say which command produced it"
        assert "-dirty" not in text, f"{path} was produced from a tree with uncommitted changes"
        numbers = _NUMBER.findall(text)
        figures = [f for cell in cells for f in _NUMBER.findall(cell)]
        assert figures, f"row {what!r} has no figures"
        missing = [f for f in figures if not _in_results(f, numbers)]
        assert not missing, f"README row {what!r}: {missing} are not in {path}"
