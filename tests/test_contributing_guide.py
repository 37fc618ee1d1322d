"""The CONTRIBUTING.md example is real code: it registers, passes the template, and trains."""

import re
from pathlib import Path

from model_helpers import random_batch, tiny_model
from test_fusion_contract import check_fusion

from cmar.models import FUSIONS


def test_the_guide_example_fusion_passes_the_shared_template():
    guide = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text()
    code = re.search(r"```python\n(import torch.*?)```", guide, re.S).group(1)
    assert "from cmar.models.fusion import FusedFrame, Pool, hidden_for" in code
    assert not re.search(r"import .*\b_\w", code), "the guide imports only public names"
    if "film" not in FUSIONS:
        exec(compile(code, "CONTRIBUTING.md", "exec"), {})
    check_fusion("film")
    out = tiny_model(fusion="film")(random_batch())
    out.losses["caption"].backward()
