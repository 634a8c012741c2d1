"""The ``fitness`` task of ``eval-downstream``: zero-shot Spearman (and ProteinGym's other
metrics) for every checkpoint and the random-init baseline, nothing for featurisers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lcplm.__main__ import main as lcplm_main
from lcplm.config import load_config
from lcplm.eval.downstream import DownstreamConfig, evaluate
from conftest import shared_data

REPO = Path(__file__).resolve().parents[2]
ONLY_FITNESS = ["homology=[]", "function=[]", "ppi=[]"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
    from lcplm.models.io import save_pretrained

    torch.manual_seed(1)
    model = BiMambaLM(BiMambaConfig(d_model=32, n_layer=2, scan_backend="chunked"))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.needs_shared_data
def test_default_config_scores_blat_for_checkpoint_and_random_init(tmp_path, checkpoint):
    shared_data("fitness", "BLAT_ECOLX_Stiffler_2015.csv")
    cfg = load_config(REPO / "experiments/downstream/default.yaml",
                      [*ONLY_FITNESS, f"checkpoints=[tiny={checkpoint}]", f"out_dir={tmp_path}"], schema=DownstreamConfig)
    logs: list[str] = []
    result = evaluate(cfg, log=logs.append)
    rows = {(r["model"], r["task"], r["metric"]): r["value"] for r in result["rows"]}
    for model in ("tiny", "random_init"):
        for metric in ("spearman", "auc", "mcc", "ndcg", "top10_recall"):
            assert ("tiny" if model == "tiny" else "random_init", "blat_ecolx", metric) in rows
    assert not any(r["model"] == "composition" for r in result["rows"])
    assert any("composition has no masked LM" in line for line in logs)
    assert rows[("tiny", "blat_ecolx", "spearman")] != rows[("random_init", "blat_ecolx", "spearman")]
    from lcplm.eval.variants import evaluate_assay

    direct = evaluate_assay(checkpoint, shared_data("fitness", "BLAT_ECOLX_Stiffler_2015.csv"),
                            wild_type=shared_data("fitness", "BLAT_ECOLX.fasta"))
    assert rows[("tiny", "blat_ecolx", "spearman")] == pytest.approx(direct["spearman"], abs=1e-12)
    assert "| blat_ecolx | all | masked-marginal | spearman |" in result["table"]


def test_fitness_task_config_errors_and_absent_data(tmp_path, capsys, checkpoint):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"""
name: f
out_dir: {tmp_path / 'runs'}
checkpoints: [{checkpoint}]
baselines: []
fitness:
  - name: gone
    dms: {tmp_path / 'missing.csv'}
    wild_type: null
""")
    assert lcplm_main(["eval-downstream", str(cfg)]) == 2  # the only task is skipped: nothing to run
    err = capsys.readouterr().err
    assert "skip gone: DMS table" in err and "missing.csv not found" in err
    cfg.write_text(cfg.read_text().replace("wild_type: null", "method: esm1v"))
    assert lcplm_main(["eval-downstream", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fitness task 'gone': unknown method 'esm1v'" in err[0]
