"""FastaDataModule: config checks, split, loaders, workers, sharding, and Lightning mid-epoch resume."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lcplm.data.datamodules import build_datamodule
from lcplm.data.datamodules.fasta import FastaDataConfig, FastaDataModule
from lcplm.data.fasta import iter_fasta
from lcplm.data.masking import IGNORE_INDEX
from lcplm.data.split import is_validation_id
from lcplm.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LCPLM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def fasta(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    lines = []
    for i in range(400):
        n = int(np.clip(rng.lognormal(4.5, 0.7), 5, 700))
        lines += [f">prot{i} test protein {i}", "".join(rng.choice(aa, n))]
    p = tmp_path / "proteins.fa"
    p.write_text("\n".join(lines) + "\n")
    return p


def cfg(path, **kw) -> FastaDataConfig:
    base = dict(path=str(path), max_length=128, max_tokens=1024, val_fraction=0.1)
    return FastaDataConfig(**{**base, **kw})


def fingerprint(batch: dict) -> str:
    h = hashlib.blake2b(digest_size=8)
    for k in sorted(batch):
        h.update(k.encode() + batch[k].numpy().tobytes())
    return h.hexdigest()


def test_built_by_the_registry_and_split_by_id_hash(fasta: Path):
    dm = build_datamodule(cfg(fasta), seed=0)
    assert isinstance(dm, FastaDataModule)
    dm.setup()
    ids = [r.id for r in iter_fasta(fasta)]
    val = {ids[i] for i in dm.val_indices}
    assert val == {i for i in ids if is_validation_id(i, 0.1)} and 15 < len(val) < 70
    seen_val = set()
    for batch in dm.val_dataloader():
        assert batch["input_ids"].numel() <= 1024
        seen_val.add(int(batch["lengths"].shape[0]))
    assert seen_val


@pytest.mark.parametrize("pack", [False, True])
def test_train_epoch_respects_budget_and_covers_train_records(fasta: Path, pack: bool):
    dm = FastaDataModule(cfg(fasta, pack=pack), seed=1)
    n_seqs = 0
    for batch in dm.train_dataloader():
        assert batch["input_ids"].numel() <= 1024
        assert ((batch["labels"] == IGNORE_INDEX) | (batch["labels"] < 32)).all()
        n_seqs += len(batch["cu_seqlens"]) - 1 if pack else len(batch["lengths"])
    assert n_seqs == len(dm.train_indices)


def test_validation_is_the_same_every_time(fasta: Path):
    dm = FastaDataModule(cfg(fasta), seed=0)
    first = [fingerprint(b) for b in dm.val_dataloader()]
    dm.val_dataloader().sampler.set_epoch(3)
    assert [fingerprint(b) for b in dm.val_dataloader()] == first


def test_epochs_differ_and_runs_repeat(fasta: Path):
    a, b = FastaDataModule(cfg(fasta), seed=0), FastaDataModule(cfg(fasta), seed=0)
    e0 = [fingerprint(x) for x in a.train_dataloader()]
    assert e0 == [fingerprint(x) for x in b.train_dataloader()]
    a.set_epoch(1)
    assert [fingerprint(x) for x in a.train_dataloader()] != e0


def test_batches_do_not_depend_on_num_workers(fasta: Path):
    plain = [fingerprint(b) for b in FastaDataModule(cfg(fasta), seed=2).train_dataloader()]
    workers = [fingerprint(b) for b in FastaDataModule(cfg(fasta, num_workers=2), seed=2).train_dataloader()]
    assert plain == workers


def test_skip_batches_resumes_mid_epoch(fasta: Path):
    dm = FastaDataModule(cfg(fasta), seed=0)
    dm.set_epoch(2)
    full = [fingerprint(b) for b in dm.train_dataloader()]
    dm2 = FastaDataModule(cfg(fasta), seed=0)
    dm2.set_epoch(2)
    dm2.skip_batches(4)
    assert [fingerprint(b) for b in dm2.train_dataloader()] == full[4:]


def _fake_trainer(world: int, rank: int) -> SimpleNamespace:
    loop = SimpleNamespace(restarting=False, epoch_loop=None)
    connector = SimpleNamespace(use_distributed_sampler=False)
    return SimpleNamespace(world_size=world, global_rank=rank, current_epoch=0, fit_loop=loop, _accelerator_connector=connector)


def test_ranks_get_disjoint_equal_shares(fasta: Path):
    shares = []
    for rank in range(3):
        dm = FastaDataModule(cfg(fasta), seed=0)
        dm.trainer = _fake_trainer(3, rank)
        shares.append([fingerprint(b) for b in dm.train_dataloader()])
    assert len({len(s) for s in shares}) == 1
    assert len(set().union(*map(set, shares))) == sum(map(len, shares))
    dm = FastaDataModule(cfg(fasta), seed=0)
    trainer = _fake_trainer(2, 0)
    trainer._accelerator_connector.use_distributed_sampler = True
    dm.trainer = trainer
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        dm.train_dataloader()


def test_default_data_missing_says_how_to_prepare(tmp_path: Path):
    dm = FastaDataModule(FastaDataConfig(cache_dir=str(tmp_path / "empty")))
    with pytest.raises(UserError, match=r"make data.*lcplm data prepare-default"):
        dm.setup()


@pytest.mark.parametrize(
    "override, key",
    [
        ({"max_tokens": 100, "max_length": 512}, "data.max_tokens"),
        ({"max_length": 2}, "data.max_length"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"mask_token_frac": 0.95}, "data.random_token_frac"),
        ({"path": []}, "data.path"),
        ({"path": [1, 2]}, "data.path"),
        ({"num_workers": -1}, "data.num_workers"),
    ],
)
def test_bad_config_values_are_one_line_naming_the_key(override: dict, key: str):
    # the same path the YAML loader takes (OmegaConf structured merge -> dataclass)
    with pytest.raises(UserError) as e:
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FastaDataConfig), override))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_too_small_validation_fraction_is_an_error(fasta: Path):
    with pytest.raises(UserError, match="no validation records"):
        FastaDataModule(cfg(fasta, val_fraction=1e-6)).setup()
    dm = FastaDataModule(cfg(fasta, val_fraction=0.0))
    assert dm.val_dataloader() == []


def test_shipped_data_yamls_validate():
    for name in ("default", "uniref50"):
        raw = OmegaConf.load(REPO / "experiments" / "data" / f"{name}.yaml")
        c = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FastaDataConfig), raw.data))
        assert c.name == "fasta" and c.max_tokens >= c.max_length


# ---- Lightning: a checkpoint mid-epoch (or at an epoch's end) resumes the same batch stream ----


class _Recorder(L.LightningModule):
    """Trains a bag-of-tokens model and records a fingerprint of every training batch."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(40, 8)
        self.head = torch.nn.Linear(8, 40)
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(fingerprint(batch))
        logits = self.head(self.emb(batch["input_ids"]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm_cfg: FastaDataConfig, max_steps: int, ckpt_dir: Path | None = None, every: int = 0, resume: str | None = None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
        default_root_dir=str(ckpt_dir) if ckpt_dir else None,
    )
    module = _Recorder()
    trainer.fit(module, datamodule=FastaDataModule(dm_cfg, seed=0), ckpt_path=resume)
    return module.seen


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_resume_continues_the_same_batches(fasta: Path, tmp_path: Path):
    c = cfg(fasta, max_tokens=4096, max_length=256)
    per_epoch = len(FastaDataModule(c, seed=0).train_sampler)
    total = 2 * per_epoch + 5
    uninterrupted = _fit(c, total)
    assert len(uninterrupted) == total and len(set(uninterrupted)) > per_epoch  # epochs differ
    for stop in (per_epoch + 3, per_epoch):  # mid-epoch 1, and exactly at the end of epoch 0
        d = tmp_path / f"ck{stop}"
        first = _fit(c, stop, ckpt_dir=d, every=stop)
        ckpt = next(d.glob(f"*step={stop}.ckpt"))
        resumed = _fit(c, total, resume=str(ckpt))
        assert first + resumed == uninterrupted, f"resume after {stop} steps diverged"
