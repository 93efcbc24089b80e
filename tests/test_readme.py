"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_writing_a_rule_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("### Writing a rule"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md: Writing a rule", "exec"), {})
    assert "double_to_add                    fired 1" in capsys.readouterr().out


def test_lower_level_example_runs():
    text = README.read_text()
    section = text[text.index("Lower level, each layer is usable on its own"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile("import numpy as np\n" + code, "README.md: lower level", "exec"), {})
