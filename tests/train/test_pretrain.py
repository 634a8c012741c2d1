"""`lcplm pretrain` end to end on CPU: the loss falls, results are written, user errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from lcplm.__main__ import main as cli
from lcplm.config import PretrainConfig, load_config
from lcplm.train.run import train

# Real protein fragments (UniProt P69905 HBA_HUMAN, P68871 HBB_HUMAN, P0A7V0 RS2_ECOLI): repeated
# with point variation so a tiny model can learn their statistics within a few dozen steps.
SEQS = [
    "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHKL",
    "MVHLTPEEKSAVTALWGKVNVDEVGGEALGRLLVVYPWTQRFFESFGDLSTPDAVMGNPKVKAHGKKVLGAFSDGLAHLDNLKGTFATLSELHCDKL",
    "MATVSMRDMLKAGVHFGHQTRYWNPKMKPFIFGARNKVHIINLEKTVPMFNEALAELNKIASRKGKILFVGTKRAASEAVKDAALSCDQFFVNHRWLGGMLTNWKTVRQSIKRLKDLETQSQDGTFDKLTKKEALMRTRELEKLENSLGGIKDMGGLPDALFVIDADHEHIAIKEANNLGIPVFAIVDTNSDPDGVDFVIPGNDDAIRAVTLYLGAVAATVREGRSQDLASQAEESFVEAE",
]


def write_fasta(path: Path, n: int = 240) -> Path:
    import random

    rnd = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            s = list(SEQS[i % len(SEQS)])
            for _ in range(3):
                s[rnd.randrange(len(s))] = rnd.choice("ACDEFGHIKLMNPQRSTVWY")
            f.write(f">seq{i} synthetic variant\n{''.join(s)}\n")
    return path


def tiny_experiment(tmp_path: Path, fasta: Path, **extra: str) -> Path:
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"""# test experiment
model: {{name: bimamba, d_model: 32, n_layer: 2}}
data: {{name: fasta, path: {fasta}, cache_dir: {tmp_path / 'cache'}, max_length: 128, max_tokens: 1024, val_fraction: 0.1}}
optim: {{lr: 0.01, warmup_steps: 5, weight_decay: 0.0}}
trainer: {{max_steps: 60, val_check_interval: 30, limit_val_batches: 4, accelerator: cpu, progress_bar: false, log_every_n_steps: 1}}
run: {{out_dir: {tmp_path / 'runs'}, name: t, save_every_n_steps: 30}}
"""
    )
    return exp


class _Losses(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_short_cpu_run_loss_falls_and_writes_the_run_directory(tmp_path: Path):
    exp = tiny_experiment(tmp_path, write_fasta(tmp_path / "p.fasta"))
    cfg = load_config(exp, [], PretrainConfig)
    rec = _Losses()
    train(cfg, extra_callbacks=[rec])
    first, last = sum(rec.losses[:10]) / 10, sum(rec.losses[-10:]) / 10
    assert len(rec.losses) == 60 and last < first - 0.3, (first, last)
    run = tmp_path / "runs" / "t"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert any((run / "tb").rglob("events.out.tfevents.*"))
    saved = json.loads((run / "results.json").read_text())
    assert saved["global_step"] == 60
    assert saved["val_mask_token_loss"] < saved["unigram_mask_token_loss"]
    # the saved config reloads to the same experiment
    again = load_config(run / "config.yaml", [], PretrainConfig)
    assert again.model == cfg.model and again.data == cfg.data
    # a second fresh run into the same directory is refused instead of mixing checkpoints
    assert cli(["pretrain", str(exp)]) == 2


def _one_line_error(capsys, argv: list[str], fragment: str) -> None:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "empty"),
        (">a\n>b\nMKV\n", "'a'"),  # a record with no sequence, named
        ("MKVL\n>a\nMKV\n", "before the first"),  # header-less FASTA
    ],
)
def test_bad_fasta_is_one_line_and_exit_2(tmp_path: Path, capsys, content: str, fragment: str):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(content)
    exp = tiny_experiment(tmp_path, fasta)
    _one_line_error(capsys, ["pretrain", str(exp)], fragment)


def test_missing_fasta_and_bad_config_are_one_line(tmp_path: Path, capsys):
    exp = tiny_experiment(tmp_path, tmp_path / "absent.fasta")
    _one_line_error(capsys, ["pretrain", str(exp)], "absent.fasta")
    _one_line_error(capsys, ["pretrain", str(tmp_path / "nope.yaml")], "nope.yaml")
    good = tiny_experiment(tmp_path, write_fasta(tmp_path / "p.fasta"))
    _one_line_error(capsys, ["pretrain", str(good), "model.d_modle=3"], "d_modle")
    _one_line_error(capsys, ["pretrain", str(good), "trainer.max_steps=many"], "max_steps")
    _one_line_error(capsys, ["pretrain", str(good), "--resume"], "no checkpoint")


def test_cli_exit_status_from_a_real_process(tmp_path: Path):
    exp = tiny_experiment(tmp_path, tmp_path / "absent.fasta")
    p = subprocess.run([sys.executable, "-m", "lcplm", "pretrain", str(exp)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("lcplm pretrain: error:")
    assert "Traceback" not in p.stderr
