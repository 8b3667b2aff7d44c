#!/usr/bin/env bash
# Run the README's test command from a fresh clone on the newest release of every dependency, ignoring
# constraints.txt, to find upstream drift before it finds CI. Run it before every stop.
#
#   bash scripts/test_newest.sh            # report: passes or not, and which versions differ from constraints.txt
#   bash scripts/test_newest.sh --update   # the same, and if the suite passes, rewrite constraints.txt from it
#   TORCH_SPEC="torch==2.14.1" bash scripts/test_newest.sh   # another torch (default: the README's torch==2.13.0)
#
# The clone is of the committed HEAD (as CI sees it), in a temporary folder that is removed afterwards unless
# KEEP=1. It takes the suite's time plus about a minute of installs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UPDATE=0
[ "${1:-}" = "--update" ] && UPDATE=1
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lmfast_newest.XXXXXX")"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
git clone -q "$ROOT" "$WORK/lmfast"
cd "$WORK/lmfast"
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
unset PIP_CONSTRAINT
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade "$TORCH_SPEC" -e ".[test]"
pip freeze --exclude-editable | sed 's/^\(torch==[0-9.]*\)+.*$/\1/' | sort -f > "$WORK/newest.txt"
grep -vE '^(#|$|pybind11==|setuptools==|wheel==)' "$ROOT/constraints.txt" | sort -f > "$WORK/pinned.txt"
echo "== versions that differ from constraints.txt (< pinned, > newest):"
diff "$WORK/pinned.txt" "$WORK/newest.txt" || true
status=0
python -m pytest -q || status=$?
if [ "$status" -ne 0 ]; then
    echo "test_newest: the suite FAILS on the newest releases (exit $status); constraints.txt keeps CI on the pinned ones"
    exit "$status"
fi
echo "test_newest: the suite passes on the newest releases"
if [ "$UPDATE" = 1 ]; then
    build_pins=""
    for p in pybind11 setuptools wheel; do
        build_pins+="$p==$(pip index versions "$p" 2>/dev/null | sed -n 's/^[^(]*(\([^)]*\)).*/\1/p' | head -1)"$'\n'
    done
    python - "$ROOT/constraints.txt" "$WORK/newest.txt" "$build_pins" <<'EOF'
import sys
path, newest, build = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
head = open(path).read().split("# Build requirements", 1)[0]
open(path, "w").write(head + "# Build requirements of setup.py (pip's isolated build environment honours PIP_CONSTRAINT "
                      "too):\n" + build + "# Runtime and test dependencies (pip freeze):\n" + newest)
EOF
    echo "test_newest: rewrote $ROOT/constraints.txt"
fi
