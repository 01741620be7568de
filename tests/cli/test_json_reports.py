"""``--json`` reports are written whole or not at all."""

from __future__ import annotations

import json

import pytest

from ebru.cli import options


def test_an_interrupted_report_keeps_the_previous_one_and_leaves_no_temporary(tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    options.write_json(report, {"fid": 12.5})
    assert json.loads(report.read_text(encoding="utf-8")) == {"fid": 12.5}

    def half_then_ctrl_c(record, f, **kw):
        f.write('{"fid": 9')
        raise KeyboardInterrupt

    monkeypatch.setattr(options.json, "dump", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        options.write_json(report, {"fid": 9.0})
    assert json.loads(report.read_text(encoding="utf-8")) == {"fid": 12.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
