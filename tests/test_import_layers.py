"""The layout's import rules hold for the whole repo (tests/_import_layers.py): no module imports a higher layer, and
no two modules import each other. The checker itself is tried on a small tree that breaks both rules."""

from tests._import_layers import circles, import_graph, upward_imports


def test_no_module_imports_upward_and_no_circles():
    graph = import_graph()
    assert len(graph) > 50 and graph["mmmmodal.demo.run"]  # it read the real tree
    assert upward_imports(graph) == []
    assert circles(graph) == []


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
    })
    graph = import_graph(tmp_path)
    assert graph["mmmmodal.ok"] == {"mmmmodal.build", "processing.a"}
    assert upward_imports(graph) == [("modeling_mmmmodal.configuration_mmmmodal", "processing.a")]
    assert circles(graph) == [["mmmmodal.build", "mmmmodal.tiny"],
                              ["modeling_mmmmodal", "modeling_mmmmodal.configuration_mmmmodal", "processing.a"]]
