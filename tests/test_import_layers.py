"""The layout's import rules hold for the whole repo (tests/_import_layers.py): no module imports a higher layer, and
no two modules import each other. The checker itself is tried on a small tree that breaks both rules."""

import subprocess
import sys

import pytest

from tests._import_layers import REPO, circles, deprecated_imports, import_graph, upward_imports


def test_no_module_imports_upward_and_no_circles():
    graph = import_graph()
    assert len(graph) > 50 and graph["mmmmodal.demo.run"]  # it read the real tree
    assert upward_imports(graph) == []
    assert circles(graph) == []
    assert deprecated_imports(graph) == []


def _write(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_an_upward_import_and_a_lazy_circle(tmp_path):
    _write(tmp_path, {
        "modeling_mmmmodal/__init__.py": "from .configuration_mmmmodal import C\n",
        "modeling_mmmmodal/configuration_mmmmodal.py": "import processing.a\nC = 1\n",  # layer 0 imports layer 1
        "processing/__init__.py": "",
        "processing/a.py": "from modeling_mmmmodal import C\n",
        "mmmmodal/__init__.py": "",
        "mmmmodal/build.py": "def f():\n    from .tiny import g\n",  # a circle through a lazy import
        "mmmmodal/tiny.py": "from mmmmodal import build\n",
        "mmmmodal/ok.py": "from . import build\nimport processing.a\n",
        "processing/old.py": "from mmmmodal.ok import *\n",  # a deprecated alias: may import upward
        "mmmmodal/user.py": "from processing.old import x\n",  # but nothing may import it
    })
    graph = import_graph(tmp_path)
    assert graph["mmmmodal.ok"] == {"mmmmodal.build", "processing.a"}
    aliases = {"processing.old": "mmmmodal.ok"}
    assert upward_imports(graph, aliases) == [("modeling_mmmmodal.configuration_mmmmodal", "processing.a")]
    assert ("processing.old", "mmmmodal.ok") in upward_imports(graph, {})
    assert deprecated_imports(graph, aliases) == [("mmmmodal.user", "processing.old")]
    assert circles(graph) == [["mmmmodal.build", "mmmmodal.tiny"],
                              ["modeling_mmmmodal", "modeling_mmmmodal.configuration_mmmmodal", "processing.a"]]


def test_the_server_and_the_padding_import_no_training_stack():
    """`mmmmodal serve` pads with `mmmmodal.training.padding`, which needs torch alone: starting the server imports
    neither TRL nor DeepSpeed nor PEFT (TRL alone took most of the server's import time)."""
    code = ("import sys, mmmmodal.serve.cli, mmmmodal.training.padding; "
            "print(sorted(m for m in ('trl', 'deepspeed', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_old_collator_paths_still_work_and_warn():
    import importlib

    from mmmmodal.training import collate, packing, padding
    from processing import rows

    for old in ("processing.collate", "processing.packing"):
        sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match="mmmmodal.training.collate"):
        old_collate = importlib.import_module("processing.collate")
    with pytest.warns(FutureWarning, match="mmmmodal.training.packing"):
        old_packing = importlib.import_module("processing.packing")
    assert old_collate.MMMModalDataCollator is collate.MMMModalDataCollator
    assert old_collate.pad_batch is padding.pad_batch
    assert old_collate.to_training_row is rows.to_training_row and old_collate.prepare_dataset is rows.prepare_dataset
    assert old_packing.MMMModalPackingCollator is packing.MMMModalPackingCollator
