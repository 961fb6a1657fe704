"""The README's state diagram is generated from the matrix, not drawn by hand."""

from __future__ import annotations

import re
from pathlib import Path

from ledger.matrix import render_mermaid

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_diagram_is_the_matrix_rendered_as_mermaid() -> None:
    blocks = re.findall(r"```mermaid\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks == [render_mermaid() + "\n"]
