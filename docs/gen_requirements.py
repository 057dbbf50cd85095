"""Regenerate rig/data/requirements.yaml from the requirements catalogue.

    python docs/gen_requirements.py [PATH/TO/REQUIREMENTS.md]

Default source: ../shared/REQUIREMENTS.md beside the repository.  Run it
whenever the catalogue changes; tests/test_evidence_catalogue.py fails while
the shipped copy is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rig.evidence.catalogue import DATA, parse_markdown, render_yaml  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "REQUIREMENTS.md"


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    if not source.is_file():
        print(f"error: {source}: no such file (give the path to REQUIREMENTS.md)", file=sys.stderr)
        return 2
    data = parse_markdown(source.read_text(encoding="utf-8"))
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(render_yaml(data, "REQUIREMENTS.md"), encoding="utf-8")
    print(f"{DATA.relative_to(ROOT)}: {len(data['requirements'])} requirements, "
          f"{len(data['safety_properties'])} safety properties")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
