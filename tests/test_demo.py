"""`make demo` (the README's first quick-start command) runs: the service on its embedded defaults, a real job on
the bundled digits, outputs downloaded, the quality gate passed."""
from __future__ import annotations

import json

from service.cli.demo import run_demo


def test_the_demo_compresses_the_bundled_model_through_the_service(tmp_path, capsys):
    out = tmp_path / "demo"
    code = run_demo(out, as_json=True, state_dir=tmp_path / "state")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result["state"] == "SUCCEEDED" and result["exit_code"] == 0
    accuracy = result["result"]["accuracy"]
    assert accuracy["original"]["top1"] > 0.95 and accuracy["original"]["top1"] - accuracy["exported"]["top1"] < 0.03
    assert result["result"]["macs_reduction"] > 0.45
    assert {p.name for p in out.iterdir()} >= {"plan.json", "weights.pt", "model.onnx", "report.json", "report.html"}
