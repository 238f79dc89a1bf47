"""The README's Python example runs as printed (on the real default model), so its names stay the API's."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs_as_printed(smollm2_dir):
    block = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    assert '"models/smollm2-135m-instruct"' in block
    names: dict = {}
    exec(compile(block.replace('"models/smollm2-135m-instruct"', repr(str(smollm2_dir))), str(README), "exec"), names)
    assert names["logits"].shape[:2] == (1, len(names["ids"])) and names["out"].text and len(names["outs"]) == 2
    assert names["fused"] and names["hidden"].fusion_layer == 20 and names["voted"].chosen in range(3)
    assert names["pick"].choice in range(3) and len(names["pick"].scores) == 3
