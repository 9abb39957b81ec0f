#!/bin/sh
# Rewrites docs/kinds.md and the README's list of kinds from the registry
# (`stasis kinds`); registry_test fails while either differs from it.
#   ./scripts/update-kinds-docs.sh [path/to/stasis]   (default: build/stasis)
set -eu
cd "$(dirname "$0")/.."
stasis=${1:-build/stasis}
list=$("$stasis" kinds)
{
  printf '%s\n' "# Kinds" "" \
    "Generated from the registry (src/kinds/registry.cc) by scripts/update-kinds-docs.sh;" \
    "src/kinds/registry_test.cc fails when it differs. Each kind is one file in src/kinds/." ""
  printf '%s\n' "$list"
} > docs/kinds.md
LIST="$list" python3 - <<'PY'
import os, re
begin, end = "<!-- kinds: begin -->\n", "<!-- kinds: end -->\n"
text = open("README.md").read()
i, j = text.index(begin) + len(begin), text.index(end)
open("README.md", "w").write(text[:i] + "\n" + os.environ["LIST"] + "\n\n" + text[j:])
PY
echo "update-kinds-docs.sh: docs/kinds.md and README.md match the registry"
