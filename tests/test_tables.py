"""Generated tables: every committed table equals what its committed record gives, and the
mechanism that writes them catches a table edited by hand."""
import json

import pytest

from projects import tables


def test_committed_tables_match_their_records():
    assert tables.problems() == []


def test_replace_block_keeps_everything_around_it():
    text = "intro\n<!-- begin: t -->\nold\n<!-- end: t -->\noutro\n"
    assert tables.block(text, "t") == "old\n"
    replaced = tables.replace_block(text, "t", "new | row\n")
    assert replaced == "intro\n<!-- begin: t -->\nnew | row\n<!-- end: t -->\noutro\n"
    with pytest.raises(KeyError, match="begin: other"):
        tables.replace_block(text, "other", "x")


def render_rows(data):
    return "\n".join(f"| {k} | {v} |" for k, v in data["rows"].items())


def plot_rows(data, path):
    with open(path, "w") as f:
        f.write(",".join(f"{k}={v}" for k, v in data["rows"].items()))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A repository of one document with one registered table."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "T.md").write_text("# T\n\n<!-- begin: t -->\n<!-- end: t -->\n")
    monkeypatch.setattr(tables, "ROOT", str(tmp_path))
    monkeypatch.setattr(tables, "TABLES", {
        "t": tables.Table("docs/T.md", f"{__name__}:render_rows", "python -m make_t")})
    return tmp_path


def test_publish_writes_record_and_block_and_a_hand_edit_is_caught(sandbox):
    path = tables.publish("t", {"rows": {"a": 1}}, f"{__name__}:render_rows", "python -m make_t")
    record = json.loads(open(path).read())
    assert record["data"] == {"rows": {"a": 1}} and record["command"] == "python -m make_t"
    doc = sandbox / "docs" / "T.md"
    assert "| a | 1 |" in doc.read_text() and "records/t.json" in doc.read_text()
    assert tables.problems() == []

    doc.write_text(doc.read_text().replace("| a | 1 |", "| a | 2 |"))  # typed by hand
    assert any("differs from what its record gives" in p for p in tables.problems())
    assert tables.main([]) == 0  # re-rendered from the record
    assert "| a | 1 |" in doc.read_text()


def test_a_table_without_record_or_block_is_reported(sandbox):
    assert tables.problems() == ["t: no record docs/records/t.json"]
    (sandbox / "docs" / "T.md").write_text("# T\n")
    assert tables.problems() == ["t: no block in docs/T.md"]


def test_a_typed_in_table_must_say_where_it_was_measured(sandbox, monkeypatch):
    monkeypatch.setitem(tables.TABLES, "t", tables.Table(
        "docs/T.md", f"{__name__}:render_rows", "python -m make_t", measured_at="abc1234"))
    assert "must say 'measured at abc1234'" in tables.problems()[0]
    (sandbox / "docs" / "T.md").write_text(
        "<!-- begin: t -->\n_measured at abc1234; `python -m make_t --record t`_\n"
        "<!-- end: t -->\n")
    assert tables.problems() == []


def test_a_pending_table_says_so_until_its_record_exists(sandbox, monkeypatch):
    monkeypatch.setitem(tables.TABLES, "t", tables.Table(
        "docs/T.md", f"{__name__}:render_rows", "python -m make_t", pending="no time"))
    assert "not measured yet" in tables.problems()[0]  # an empty block
    assert tables.main([]) == 0
    doc = sandbox / "docs" / "T.md"
    assert "_Not measured yet: no time. `python -m make_t --record t` measures it" in \
        doc.read_text()
    tables.publish("t", {"rows": {"a": 1}}, f"{__name__}:render_rows", "python -m make_t")
    assert tables.problems() == ["t: has a record now; drop its pending in projects/tables.py"]


def test_a_figure_is_drawn_from_the_same_record_as_its_table(sandbox, monkeypatch):
    monkeypatch.setitem(tables.TABLES, "t", tables.Table(
        "docs/T.md", f"{__name__}:render_rows", "python -m make_t",
        figure="docs/t.txt", plot=f"{__name__}:plot_rows"))
    figure = sandbox / "docs" / "t.txt"
    tables.publish("t", {"rows": {"a": 1}}, f"{__name__}:render_rows", "python -m make_t")
    assert figure.read_text() == "a=1" and tables.problems() == []
    figure.unlink()
    assert tables.problems() == ["t: no figure docs/t.txt; run `python -m projects.tables`"]
    assert tables.main([]) == 0 and figure.read_text() == "a=1"


def test_a_script_cannot_publish_into_another_scripts_table(sandbox):
    with pytest.raises(SystemExit, match="rendered by"):
        tables.publish("t", {"rows": {}}, "projects.benchmark.ddp:render", "python -m x")
    with pytest.raises(SystemExit, match="no such table"):
        tables.publish("nope", {"rows": {}}, f"{__name__}:render_rows", "python -m x")


def test_command_line_drops_the_record_option():
    line = tables.command_line("projects.benchmark.ddp", ["--record", "ddp-shapes", "--steps", "3"])
    assert line == "python -m projects.benchmark.ddp --steps 3"


def test_a_script_publishes_its_table_with_record(sandbox, monkeypatch):
    from projects.model_zoo import config_table

    monkeypatch.setitem(tables.TABLES, "t", tables.Table(
        "docs/T.md", "projects.model_zoo.config_table:render", "python -m x"))
    row = "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py"
    config_table.main([row, "--record", "t"])  # configs are read from the real repository
    record = json.loads((sandbox / "docs" / "records" / "t.json").read_text())
    assert record["data"]["rows"] == [{"config": row, "trainable_backbone": 1_195_008}]
    assert record["command"] == f"python -m projects.model_zoo.config_table {row}"
    assert f"[`{row}`](../{row}) | 1.20M | 1.20M |" in (sandbox / "docs" / "T.md").read_text()
    assert tables.problems() == []
