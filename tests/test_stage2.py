"""Stage 2 (LC-PLM-G): the PPI-walk datamodule, its configs, and a stage-2 run from a stage-1 checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lcplm.config import PretrainConfig, load_config
from lcplm.data.datamodules import build_datamodule
from lcplm.data.datamodules.ppi_walks import (
    PPIWalkDataConfig,
    PPIWalkDataModule,
    resolve_data_path,
)
from lcplm.data.masking import IGNORE_INDEX
from lcplm.data.tokenizer import BON, CLS, EDGE, EOS, EON, NO_EDGE, PAD, decode, is_residue
from lcplm.errors import UserError
from conftest import REPO, shared_data

AA = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture
def graph_files(tmp_path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    n = 60
    names = [f"P{i:03d}" for i in range(n)]
    lens = torch.randint(5, 120, (n,), generator=g).tolist()
    table = tmp_path / "seqs.tsv"
    table.write_text(
        "".join(f"{k}\t{''.join(AA[j] for j in torch.randint(0, 20, (L,), generator=g).tolist())}\n" for k, L in zip(names, lens))
    )
    a, b = torch.randint(0, n, (150,), generator=g).tolist(), torch.randint(0, n, (150,), generator=g).tolist()
    lab = torch.randint(0, 2, (150,), generator=g).tolist()
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{names[x]}\t{names[y]}\t{z}\n" for x, y, z in zip(a, b, lab)))
    return pairs, table


def _cfg(graph_files, **kw) -> PPIWalkDataConfig:
    pairs, table = graph_files
    base = dict(edges=str(pairs), sequences=str(table), context_len=300, max_protein_len=80, batch_size=5, p_neg=0.3)
    base.update(kw)
    return PPIWalkDataConfig(**base)


def _unmask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])


def test_batches_are_masked_walk_contexts_with_visible_specials(graph_files):
    dm = build_datamodule(_cfg(graph_files), seed=0)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == -(-dm.train_split.num_nodes // 5)
    n_targets = n_residues = 0
    for batch in batches:
        assert set(batch) == {"input_ids", "lengths", "labels"}
        ids, lengths, labels = batch["input_ids"], batch["lengths"], batch["labels"]
        assert ids.dtype == lengths.dtype == labels.dtype == torch.long and ids.shape == labels.shape
        assert (lengths <= 300).all() and int(lengths.max()) == ids.shape[1]
        orig = _unmask(batch)
        pos = torch.arange(ids.shape[1])
        assert ((orig == PAD) == (pos >= lengths[:, None])).all()
        assert (orig[:, 0] == CLS).all() and (orig.gather(1, (lengths - 1)[:, None]) == EOS).all()
        special = torch.isin(orig, torch.tensor([CLS, EOS, PAD, BON, EON, EDGE, NO_EDGE]))
        assert torch.equal(ids[special], orig[special])  # specials and padding are never touched
        assert (labels[~is_residue(orig)] == IGNORE_INDEX).all()  # targets are residues only
        n_targets += int((labels != IGNORE_INDEX).sum())
        n_residues += int(is_residue(orig).sum())
    assert 0.10 < n_targets / n_residues < 0.20


def test_train_and_validation_walks_use_disjoint_proteins(graph_files):
    dm = PPIWalkDataModule(_cfg(graph_files, val_fraction=0.2), seed=3)
    dm.setup()
    tr, va = set(dm.train_split.ids), set(dm.val_split.ids)
    assert not tr & va and tr | va == set(dm.graph.ids)
    assert len(va) == round(0.2 * dm.graph.num_nodes)
    seqs = dict(zip(dm.graph.ids, dm.graph.sequences))
    val_seqs = {seqs[i] for i in va}
    for batch in dm.val_dataloader():
        orig = _unmask(batch)
        for w in range(orig.shape[0]):
            toks = orig[w, : int(batch["lengths"][w])].tolist()
            starts = [i for i, t in enumerate(toks) if t == BON]
            ends = [i for i, t in enumerate(toks) if t == EON]

            for s, e in zip(starts, ends):
                frag = decode(toks[s + 1 : e])
                assert any(frag in v for v in val_seqs)


def test_same_seed_same_batches_and_epochs_differ(graph_files):
    def batches(seed, epoch=0, workers=0):
        dm = PPIWalkDataModule(_cfg(graph_files, num_workers=workers), seed=seed)
        dl = dm.train_dataloader()
        dl.sampler.set_epoch(epoch)
        return [b["input_ids"] for b in dl]

    a = batches(0)
    assert all(torch.equal(x, y) for x, y in zip(a, batches(0, workers=2)))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, batches(1)))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, batches(0, epoch=1)))


def test_validation_is_fixed_across_epochs(graph_files):
    dm = PPIWalkDataModule(_cfg(graph_files), seed=0)
    dl = dm.val_dataloader()
    first = [b["labels"] for b in dl]
    dl.sampler.set_epoch(5)
    assert all(torch.equal(x, y) for x, y in zip(first, (b["labels"] for b in dl)))


def test_epoch_starts_a_walk_from_every_node(graph_files):
    dm = PPIWalkDataModule(_cfg(graph_files, walks_per_node=2), seed=0)
    dm.setup()
    sampler = dm.train_dataloader().sampler
    n = dm.train_split.num_nodes
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        starts = torch.from_numpy(np.concatenate([k.indices for k in sampler]) % n)
        assert torch.equal(torch.bincount(starts, minlength=n), torch.full((n,), 2))
        orders.append(starts)
    assert not torch.equal(*orders)


def test_resolve_data_path_uses_lcplm_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LCPLM_DATA_DIR", str(tmp_path))
    assert resolve_data_path("../shared/data/ppi/x.tsv") == tmp_path / "ppi" / "x.tsv"
    assert resolve_data_path("shared:ppi/x.tsv") == tmp_path / "ppi" / "x.tsv"
    assert resolve_data_path("mine/x.tsv") == Path("mine/x.tsv")
    monkeypatch.delenv("LCPLM_DATA_DIR")
    # without the variable: ../shared/data beside the project root, whatever the working directory
    beside_project = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    assert resolve_data_path("../shared/data/ppi/x.tsv") == beside_project / "ppi" / "x.tsv"


def test_missing_shared_file_says_where_it_comes_from(monkeypatch, tmp_path):
    monkeypatch.setenv("LCPLM_DATA_DIR", str(tmp_path))
    dm = PPIWalkDataModule(PPIWalkDataConfig(), seed=0)
    with pytest.raises(UserError, match=r"data\.edges: file .*protein\.actions\.tsv not found \(it comes from \.\./shared/data"):
        dm.setup()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(context_len=50, max_protein_len=47), r"context_len \(50\) must hold"),
        (dict(p_neg=-0.1), r"data\.p_neg must be in \[0, 1\]"),
        (dict(val_fraction=1.0), r"data\.val_fraction must be in \(0, 1\)"),
        (dict(batch_size=0), r"data\.batch_size must be >= 1"),
        (dict(walks_per_node=0), r"data\.walks_per_node must be >= 1"),
        (dict(edge_format="csv"), r"data\.edge_format must be one of"),
        (dict(mask_prob=2.0), r"data\.mask_prob must be in \[0, 1\]"),
        (dict(mask_token_frac=0.95, random_token_frac=0.1), r"sum to at most 1"),
    ],
)
def test_bad_settings_are_user_errors(kw, match, tmp_path):
    with pytest.raises(UserError, match=match):
        PPIWalkDataConfig(**kw)
    p = tmp_path / "x.yaml"  # the same check when the config file is loaded
    p.write_text("data:\n  name: ppi_walks\n" + "".join(f"  {k}: {v}\n" for k, v in kw.items()))
    with pytest.raises(UserError, match=match):
        load_config(p, schema=PretrainConfig)


def test_unknown_data_key_is_rejected(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("data:\n  name: ppi_walks\n  walk_len: 3\n")
    with pytest.raises(UserError, match="walk_len"):
        load_config(p, schema=PretrainConfig)


@pytest.mark.needs_shared_data
def test_shared_yeast_graph_datamodule():
    edges = shared_data("ppi", "yeast_guo", "protein.actions.tsv")
    seqs = shared_data("ppi", "yeast_guo", "protein.dictionary.tsv")
    dm = PPIWalkDataModule(PPIWalkDataConfig(edges=str(edges), sequences=str(seqs), context_len=1024, max_protein_len=400))
    dm.setup()
    assert dm.graph.num_edges > 5000
    val_edges = dm.val_split.graph.col.numel() // 2
    assert val_edges > dm.val_split.num_nodes / 2  # the breadth-first hold-out keeps its edges
    batch = next(iter(dm.val_dataloader()))
    orig = _unmask(batch)
    assert (orig == EDGE).any()


def _val_loss(model: torch.nn.Module, dm: PPIWalkDataModule, limit: int) -> float:
    """Token-weighted masked-LM loss over the first ``limit`` validation batches (as MLMTask logs it)."""
    from lcplm.tasks.mlm import masked_lm_loss

    total = n = 0.0
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            if i == limit:
                break
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss, k, _ = masked_lm_loss(model(**inputs), batch["labels"])
            total, n = total + float(loss) * int(k), n + int(k)
    return total / n


@pytest.mark.slow
def test_stage2_run_starts_from_stage1_checkpoint_and_val_loss_falls(graph_files, tmp_path):
    """`lcplm pretrain experiments/graph/yeast_tiny.yaml` on a small graph, initialised from stage 1."""
    from lightning.pytorch.callbacks import Callback

    from lcplm.models.io import from_pretrained, read_pretrained
    from lcplm.train.run import train

    pairs, table = graph_files
    fasta = tmp_path / "stage1.fasta"
    fasta.write_text("".join(f">{line.split()[0]}\n{line.split()[1]}\n" for line in table.read_text().splitlines()))
    quiet = ["trainer.progress_bar=false", "trainer.max_time_minutes=null", "trainer.num_threads=1", f"run.out_dir={tmp_path / 'runs'}"]
    stage1 = load_config(
        REPO / "experiments" / "pretrain" / "tiny.yaml",
        quiet + [f"data.path={fasta}", f"data.cache_dir={tmp_path / 'cache'}", "data.max_length=128", "data.max_tokens=1024",
                 "trainer.max_steps=5", "trainer.val_check_interval=5", "trainer.limit_val_batches=1", "run.name=s1"],
    )
    train(stage1)
    ckpt = tmp_path / "runs" / "s1" / "checkpoints" / "last.ckpt"
    limit = 6
    stage2 = load_config(
        REPO / "experiments" / "graph" / "yeast_tiny.yaml",
        quiet + [f"data.edges={pairs}", f"data.sequences={table}", "data.context_len=256", "data.max_protein_len=100",
                 "data.val_fraction=0.25", "trainer.max_steps=40", "trainer.val_check_interval=20",
                 f"trainer.limit_val_batches={limit}", "optim.warmup_steps=5", "optim.lr=0.004",
                 f"run.init_from={ckpt}", "run.name=s2"],
    )
    _, stage1_weights = read_pretrained(ckpt)

    class StartsFromStage1(Callback):
        seen = False

        def on_train_start(self, trainer, task):
            own = task.model.state_dict()
            assert own.keys() == stage1_weights.keys()
            assert all(torch.equal(own[k], stage1_weights[k]) for k in own)
            StartsFromStage1.seen = True

    results = train(stage2, extra_callbacks=[StartsFromStage1()])
    assert StartsFromStage1.seen
    dm = PPIWalkDataModule(stage2.data, seed=stage2.run.seed)
    start = _val_loss(from_pretrained(ckpt), dm, limit)
    end = results["val_loss"]
    assert end == pytest.approx(_val_loss(from_pretrained(tmp_path / "runs" / "s2" / "checkpoints" / "last.ckpt"), dm, limit), rel=1e-4)
    print(f"stage-2 validation loss {start:.4f} -> {end:.4f}")
    assert end < start - 0.05, f"stage-2 validation loss did not fall: {start:.4f} -> {end:.4f}"
    saved = json.loads((tmp_path / "runs" / "s2" / "results.json").read_text())
    assert saved["global_step"] == 40


def test_missing_stage1_checkpoint_says_to_run_make_pretrain(tmp_path, monkeypatch):
    from lcplm.train.run import train

    monkeypatch.chdir(tmp_path)  # no runs/tiny/checkpoints/last.ckpt here
    cfg = load_config(REPO / "experiments" / "graph" / "yeast_tiny.yaml", ["trainer.progress_bar=false"])
    with pytest.raises(UserError, match=r"run\.init_from: checkpoint runs/tiny/checkpoints/last\.ckpt not found.*make pretrain"):
        train(cfg)


class _TinyLM(torch.nn.Module):
    """A stand-in network: the test is about which batches the loop sees, not about the model."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(40, 8)
        self.out = torch.nn.Linear(8, 40)

    def forward(self, input_ids, lengths):
        return self.out(self.emb(input_ids))


def test_lightning_resume_sees_the_batches_of_an_uninterrupted_run(graph_files, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lcplm.config import OptimConfig
    from lcplm.tasks.mlm import MLMTask

    class Record(Callback):
        """Records every training batch; saves a checkpoint after step 5, as a periodic checkpoint would."""

        def __init__(self, save=None):
            self.seen, self.save = [], save

        def on_train_batch_start(self, trainer, task, batch, batch_idx):
            self.seen.append((trainer.current_epoch, tuple(batch["input_ids"].shape), int(batch["input_ids"].sum())))

        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            if self.save and trainer.global_step == 5:
                trainer.save_checkpoint(self.save)

    def fit(ckpt=None, save=None):
        rec = Record(save)
        trainer = L.Trainer(
            max_steps=14, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False, callbacks=[rec],
        )
        torch.manual_seed(0)
        task = MLMTask(_TinyLM(), OptimConfig(warmup_steps=1))
        trainer.fit(task, datamodule=PPIWalkDataModule(_cfg(graph_files), seed=4), ckpt_path=ckpt, weights_only=True)
        return rec.seen, trainer

    whole, trainer = fit(save=tmp_path / "step5.ckpt")
    assert 5 < trainer.num_training_batches < 14  # the run crosses an epoch boundary; step 5 is mid-epoch
    rest, _ = fit(ckpt=str(tmp_path / "step5.ckpt"))
    assert rest == whole[5:]
