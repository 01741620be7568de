"""The layer contract of ``pyproject.toml`` ([tool.importlinter]) holds, and would catch the cycles it exists for.

The contracts are checked on the import graph of the installed source (grimp sees imports inside
functions too). The second half adds, one at a time, imports of the kinds the contract forbids
(an upward import, two packages of one row importing each other, two modules of one package
importing each other) to a copy of that graph and checks that a contract breaks, so the test
cannot pass by checking nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")
api = pytest.importorskip("importlinter.api")
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract  # noqa: E402
from importlinter.contracts.layers import LayersContract  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
KINDS = {"layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract}


@pytest.fixture(scope="module")
def config():
    return api.read_configuration(str(PYPROJECT))


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("ebru", cache_dir=None)


def broken(config, graph) -> list[str]:
    """Names of the contracts that ``graph`` breaks."""
    out = []
    for opts in config["contracts_options"]:
        contract = KINDS[opts["type"]](name=opts["name"], session_options=config["session_options"],
                                       contract_options=opts)
        if not contract.check(graph, verbose=False).kept:
            out.append(opts["id"])
    return out


def test_every_package_is_in_the_layer_contract(config, graph):
    layers = next(c for c in config["contracts_options"] if c["type"] == "layers")["layers"]
    named = {name.strip(" ()") for row in layers for name in row.split("|")}
    children = {m.split(".")[1] for m in graph.find_children("ebru")}
    outside = children - named - {"__main__"}
    assert not outside, f"packages outside the layer contract: {outside}"


def test_the_contracts_hold(config, graph):
    assert broken(config, graph) == []


@pytest.mark.parametrize(("importer", "imported", "contract"), [
    ("ebru.text.model", "ebru.train.config", "layers"),  # a text process reaching up into the trainer
    ("ebru.tasks.text", "ebru.train.trainer", "layers"),  # a task reaching back into the Trainer
    ("ebru.eval.evaluate", "ebru.pipelines.image", "layers"),  # metrics importing the pipeline they score
    ("ebru.nets.unet", "ebru.data.folder", "layers"),  # two packages of one row
    ("ebru.diffusion.samplers", "ebru.pipelines.image", "layers"),
])
def test_an_import_against_the_layers_breaks_the_contract(config, graph, importer, imported, contract):
    g = copy.deepcopy(graph)
    g.add_import(importer=importer, imported=imported)
    assert contract in broken(config, g)


def test_two_modules_of_one_package_importing_each_other_break_the_contract(config, graph):
    for package in ("ebru.cli", "ebru.trust", "ebru.text"):
        first, second = sorted(graph.find_children(package))[:2]
        g = copy.deepcopy(graph)
        g.add_import(importer=first, imported=second)
        g.add_import(importer=second, imported=first)
        assert "acyclic" in broken(config, g), (first, second)
