"""Transition graph (docs/design.md §2): edge sets written out by hand, order, pruning, JSON, PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from opplan.cli import cli
from opplan.config import PlanParams
from opplan.errors import OpplanError
from opplan.planning.drawing import draw_graph
from opplan.planning.graph import S0, State, build_graph, graph_from_params, parse_state

LENGTHS, LRS = [16, 32, 64], [0.01, 0.001, 0.0001]


def edge_set(graph) -> set[str]:
    return {f"{a.name} {b.name}" for a, b in graph.edges}


def lines(text: str) -> set[str]:
    return {line.strip() for line in text.strip().splitlines() if line.strip()}


BASIC_3X3 = lines("""
    S0 cs/16/0.01
    S0 cs/32/0.01
    cs/16/0.01 cs/32/0.01
    cs/32/0.01 cs/64/0.01
    cs/16/0.001 cs/32/0.001
    cs/32/0.001 cs/64/0.001
    cs/16/0.0001 cs/32/0.0001
    cs/32/0.0001 cs/64/0.0001
    cs/16/0.01 cs/16/0.001
    cs/16/0.001 cs/16/0.0001
    cs/32/0.01 cs/32/0.001
    cs/32/0.001 cs/32/0.0001
    cs/64/0.01 cs/64/0.001
    cs/64/0.001 cs/64/0.0001
""")
EXTENDED_3X3 = BASIC_3X3 | lines("""
    cs/32/0.01 cs/16/0.001
    cs/64/0.01 cs/32/0.001
    cs/32/0.001 cs/16/0.0001
    cs/64/0.001 cs/32/0.0001
""")
# max_jump = 2: each moving index moves 1 or 2 steps; basic edges never move both
JUMP2_EXTRA_BASIC = lines("""
    cs/16/0.01 cs/64/0.01
    cs/16/0.001 cs/64/0.001
    cs/16/0.0001 cs/64/0.0001
    cs/16/0.01 cs/16/0.0001
    cs/32/0.01 cs/32/0.0001
    cs/64/0.01 cs/64/0.0001
""")
JUMP2_EXTRA_EXTENDED = lines("""
    cs/32/0.01 cs/16/0.0001
    cs/64/0.01 cs/32/0.0001
    cs/64/0.01 cs/16/0.001
    cs/64/0.01 cs/16/0.0001
    cs/64/0.001 cs/16/0.0001
""")
BASIC_2X2 = lines("""
    S0 us/8/0.1
    S0 us/16/0.1
    us/8/0.1 us/16/0.1
    us/8/0.01 us/16/0.01
    us/8/0.1 us/8/0.01
    us/16/0.1 us/16/0.01
""")
EXTENDED_2X2 = BASIC_2X2 | {"us/16/0.1 us/8/0.01"}


def test_basic_and_extended_3x3_edges_match_spec_counts():
    basic = build_graph(["cs"], LENGTHS, LRS, kind="basic")
    extended = build_graph(["cs"], LENGTHS, LRS, kind="extended")
    assert edge_set(basic) == BASIC_3X3 and len(basic.edges) == 14
    assert edge_set(extended) == EXTENDED_3X3 and len(extended.edges) == 18


def test_extended_graph_is_the_authors_train_3d_op_graph():
    # train_3d_op.py: node k = (length index setting_list[k], lr index), edges by node id
    start = [0, 0, 1, 1, 4, 4, 2, 4, 7, 2, 5, 5, 7, 3, 5, 8, 6, 8]
    end = [1, 4, 4, 2, 2, 7, 5, 5, 5, 3, 3, 8, 8, 6, 6, 6, 9, 9]
    basic_select = [0, 1, 2, 3, 5, 6, 7, 9, 11, 12, 13, 14, 16, 17]

    def name(node: int) -> str:
        return "S0" if node == 0 else f"cs/{LENGTHS[(node - 1) // 3]}/{LRS[(node - 1) % 3]:g}"

    authors = [f"{name(a)} {name(b)}" for a, b in zip(start, end)]
    assert edge_set(build_graph(["cs"], LENGTHS, LRS)) == set(authors)
    assert edge_set(build_graph(["cs"], LENGTHS, LRS, kind="basic")) == {authors[i] for i in basic_select}


def test_max_jump_2():
    basic = build_graph(["cs"], LENGTHS, LRS, kind="basic", max_jump=2)
    extended = build_graph(["cs"], LENGTHS, LRS, kind="extended", max_jump=2)
    assert edge_set(basic) == BASIC_3X3 | JUMP2_EXTRA_BASIC and len(basic.edges) == 20
    assert edge_set(extended) == EXTENDED_3X3 | JUMP2_EXTRA_BASIC | JUMP2_EXTRA_EXTENDED
    assert len(extended.edges) == 29


def test_2x2_edges():
    assert edge_set(build_graph(["us"], [8, 16], [0.1, 0.01], kind="basic")) == BASIC_2X2
    assert edge_set(build_graph(["us"], [8, 16], [0.1, 0.01])) == EXTENDED_2X2


def test_strategies_never_mix_and_default_params_give_36_edges():
    graph = graph_from_params(PlanParams())
    assert len(graph.edges) == 36 and len(graph.states) == 18
    assert all(a == S0 or a.sampling == b.sampling for a, b in graph.edges)
    assert {f"{a.name} {b.name}".replace("us/", "cs/") for a, b in graph.edges} == EXTENDED_3X3
    assert [s.name for s in graph.final_states] == ["cs/64/0.0001", "us/64/0.0001"]


def test_topological_order_rate_then_length():
    graph = build_graph(["cs", "us"], LENGTHS, LRS, max_jump=2)
    names = [n.name for n in graph.nodes]
    assert names[:10] == ["S0", "cs/16/0.01", "cs/32/0.01", "cs/64/0.01", "cs/16/0.001", "cs/32/0.001",
                          "cs/64/0.001", "cs/16/0.0001", "cs/32/0.0001", "cs/64/0.0001"]
    assert names[10] == "us/16/0.01"
    position = {n: i for i, n in enumerate(graph.nodes)}
    assert all(position[a] < position[b] for a, b in graph.edges)
    assert [position[b] for _, b in graph.edges] == sorted(position[b] for _, b in graph.edges)


def test_predecessors_and_successors():
    graph = build_graph(["cs"], LENGTHS, LRS)
    s = lambda name: parse_state(name, LENGTHS, LRS)  # noqa: E731
    assert [p.name for p in graph.predecessors(s("cs/32/0.001"))] == ["cs/32/0.01", "cs/64/0.01", "cs/16/0.001"]
    assert [p.name for p in graph.successors(s("cs/32/0.001"))] == ["cs/64/0.001", "cs/16/0.0001", "cs/32/0.0001"]
    assert [p.name for p in graph.successors(S0)] == ["cs/16/0.01", "cs/32/0.01"]
    assert graph.predecessors(S0) == () and graph.successors(s("cs/64/0.0001")) == ()


def test_pruning_with_custom_final_state():
    extended = build_graph(["cs"], LENGTHS, LRS, final_states=["cs/32/0.001"])
    assert {n.name for n in extended.states} == {"cs/16/0.01", "cs/32/0.01", "cs/64/0.01", "cs/16/0.001",
                                                 "cs/32/0.001"}
    basic = build_graph(["cs"], LENGTHS, LRS, kind="basic", final_states=["cs/32/0.001"])
    assert edge_set(basic) == lines("""
        S0 cs/16/0.01
        S0 cs/32/0.01
        cs/16/0.01 cs/32/0.01
        cs/16/0.01 cs/16/0.001
        cs/32/0.01 cs/32/0.001
        cs/16/0.001 cs/32/0.001
    """)


def test_pruning_with_start_lengths():
    basic = build_graph(["cs"], LENGTHS, LRS, kind="basic", start_lengths=[32])
    assert {n.name for n in basic.states} == {f"cs/{l}/{r:g}" for l in (32, 64) for r in LRS}
    extended = build_graph(["cs"], LENGTHS, LRS, start_lengths=[32])
    assert "cs/16/0.01" not in {n.name for n in extended.states} and len(extended.states) == 8
    only_path = build_graph(["cs"], LENGTHS, LRS, start_lengths=[64], final_states=["cs/16/0.0001"])
    assert edge_set(only_path) == lines("""
        S0 cs/64/0.01
        cs/64/0.01 cs/32/0.001
        cs/32/0.001 cs/16/0.0001
    """)
    with pytest.raises(OpplanError, match="reachable"):
        build_graph(["cs"], LENGTHS, LRS, kind="basic", start_lengths=[64], final_states=["cs/16/0.0001"])


def test_single_length_starts_alone_and_strategy_without_final_is_dropped():
    graph = build_graph(["cs", "us"], [16], LRS, final_states=["us/16/0.0001"])
    assert edge_set(graph) == lines("""
        S0 us/16/0.01
        us/16/0.01 us/16/0.001
        us/16/0.001 us/16/0.0001
    """)


def test_parse_state_and_names():
    assert State("cs", 16, 0.01).name == "cs/16/0.01" and State("us", 64, 1e-4).name == "us/64/0.0001"
    assert parse_state("cs/16/1e-2", LENGTHS, LRS) == State("cs", 16, 0.01)
    assert parse_state("S0", LENGTHS, LRS) is S0 and S0.name == "S0"
    for bad in ("cs/16", "xx/16/0.01", "cs/17/0.01", "cs/16/0.02", "cs/sixteen/0.01", "cs/16/0.01/1"):
        with pytest.raises(OpplanError, match="state"):
            parse_state(bad, LENGTHS, LRS)


@pytest.mark.parametrize("kwargs", [{"kind": "wide"}, {"max_jump": 0}, {"start_lengths": [24]},
                                    {"final_states": ["cs/99/0.01"]}])
def test_bad_arguments_are_opplan_errors(kwargs):
    with pytest.raises(OpplanError):
        build_graph(["cs"], LENGTHS, LRS, **kwargs)
    with pytest.raises(OpplanError):
        build_graph(["cs"], [32, 16], LRS)


def test_json_form():
    graph = build_graph(["us"], [8, 16], [0.1, 0.01], kind="basic")
    assert graph.to_json() == {
        "states": ["S0", "us/8/0.1", "us/16/0.1", "us/8/0.01", "us/16/0.01"],
        "edges": [["S0", "us/8/0.1"], ["S0", "us/16/0.1"], ["us/8/0.1", "us/16/0.1"], ["us/8/0.1", "us/8/0.01"],
                  ["us/16/0.1", "us/16/0.01"], ["us/8/0.01", "us/16/0.01"]],
        "final_states": ["us/16/0.01"],
    }


def test_png_is_written(tmp_path):
    graph = build_graph(["cs", "us"], LENGTHS, LRS, final_states=["cs/32/0.001", "us/64/0.0001"])
    path = tmp_path / "figs" / "graph.png"
    chosen = ["S0", "cs/16/0.01", "cs/32/0.01", "cs/32/0.001"]
    draw_graph(graph, path, chosen=chosen, labels={("cs/16/0.01", "cs/32/0.01"): "12 ep, 0.61"})
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_the_graph_figure_has_a_legend_for_every_mark(tmp_path, monkeypatch):
    from opplan.planning import drawing

    saved = []
    monkeypatch.setattr(drawing, "atomic_savefig", lambda fig, path, **kw: saved.append(fig))
    graph = build_graph(["us"], [8, 16], [0.1, 0.01], kind="basic")
    draw_graph(graph, tmp_path / "plain.png")
    draw_graph(graph, tmp_path / "path.png", chosen=["us/8/0.1", "us/16/0.1"], labels={("S0", "us/8/0.1"): "3ep / 0.5"})
    legends = [[text.get_text() for text in fig.axes[0].get_legend().get_texts()] for fig in saved]
    assert legends[0] == ["edge (a transition)", "final state (thick rim)"]
    assert legends[1] == ["edge (trained: kept epoch t* / score V)", "chosen path", "state on the chosen path",
                          "final state (thick rim)"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs a /proc folder, where nothing can be made")
def test_graph_png_where_nothing_can_be_written_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["graph", "--png", "/proc/x.png"])
    assert result.exit_code == 2, result.output
    assert "cannot write /proc/x.png" in result.output and "Traceback" not in result.output
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(cli, ["graph", "--png", str(tmp_path / "file" / "x.png")])  # a parent that is a file
    assert result.exit_code == 2 and f"cannot write {tmp_path / 'file' / 'x.png'}" in result.output, result.output


def test_graph_png_in_a_format_matplotlib_cannot_write_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "graph.xyz"
    result = CliRunner().invoke(cli, ["graph", "--png", str(target)])
    assert result.exit_code == 2, result.output
    assert f"{target}: matplotlib cannot write .xyz files; use one of" in result.output and ".svg" in result.output
    assert "Traceback" not in result.output and not target.exists()
    result = CliRunner().invoke(cli, ["graph", "--png", str(tmp_path / "graph.SVG")])  # suffixes in any case
    assert result.exit_code == 0 and (tmp_path / "graph.SVG").read_text().lstrip().startswith("<?xml")
