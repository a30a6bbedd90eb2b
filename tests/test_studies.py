"""Studies are found through the "memjax.studies" entry points: memjax's own, in the
paper's order, and one that another installed package registers."""
import sys
import textwrap

import pytest

from memjax.errors import MemjaxError
from memjax.studies import paper_studies, registered, study


def test_memjax_registers_its_studies_in_the_papers_order():
    assert paper_studies() == ["consistency", "sensitivity", "capacity", "convergence", "csr",
                               "noise-curves", "regularization", "filters"]
    assert list(registered())[-3:] == ["cscore", "el2n", "memorization"]
    assert study("csr").EXPERIMENT == "E5"
    with pytest.raises(MemjaxError, match="unknown experiment 'nope'; known: capacity"):
        study("nope")


def test_another_package_registers_a_study(tmp_path, monkeypatch):
    (tmp_path / "my_study.py").write_text(textwrap.dedent('''
        """A study of my own."""
    '''))
    info = tmp_path / "my_study-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-study\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[memjax.studies]\nmine = my_study\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert study("mine").__doc__ == "A study of my own."
    assert list(registered())[-1] == "mine" and "mine" not in paper_studies()
    monkeypatch.delitem(sys.modules, "my_study")
