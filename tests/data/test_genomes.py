"""Genome readers, genome tokenisation and windows, pair sources, the genome datamodule."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
import torch

from lcplm.data import tokenizer
from lcplm.data.genomes import (
    PHROG_CATEGORIES,
    Genome,
    GenomeProtein,
    check_unique_protein_ids,
    genome_windows,
    phrog_category,
    protein_residue_mask,
    read_genbank,
    read_protein_fasta,
)
from lcplm.data.pair_sources import (
    PairSourceConfig,
    build_pair_source,
    evenly_spaced,
    neighbourhood_pairs,
)
from lcplm.data.edge_lists import read_edges
from lcplm.data.paths import resolve_data_path
from lcplm.errors import UserError
from conftest import shared_data

# ----------------------------------------------------------------------------- fixtures

TOY_GBK = """\
LOCUS       TOYPHAGE                 120 bp    DNA     linear   PHG 01-JAN-2020
DEFINITION  toy phage.
ACCESSION   TOYPHAGE
VERSION     TOYPHAGE
KEYWORDS    .
SOURCE      .
  ORGANISM  .
            .
FEATURES             Location/Qualifiers
     CDS             complement(40..60)
                     /locus_tag="TOY_0002"
                     /function="DNA"
                     /function=" RNA and nucleotide metabolism"
                     /product="HNH endonuclease"
                     /phrog="559"
                     /translation="MKLV*"
     CDS             1..30
                     /locus_tag="TOY_0001"
                     /function="tail"
                     /product="tail fiber"
                     /translation="magw"
     CDS             70..75
                     /locus_tag="TOY_PSEUDO"
                     /pseudo
     CDS             82..93
                     /locus_tag="TOY_0003"
ORIGIN
        1 atggctggtt ggtaaaaaaa aaaaaaaaaa aaaaaaaaaa aaaaaaaaaa aaaaaaaaaa
       61 aaaaaaaaaa aaaaaaaaaa aatgaaatgg taaaaaaaaa aaaaaaaaaa aaaaaaaaaa
//
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _genome(lengths: list[int], gid: str = "g", rng: random.Random | None = None) -> Genome:
    rng = rng or random.Random(0)
    aa = tokenizer.STANDARD_AMINO_ACIDS
    return Genome(
        gid,
        [GenomeProtein(f"{gid}_{i}", "".join(rng.choice(aa) for _ in range(n))) for i, n in enumerate(lengths)],
    )


# ----------------------------------------------------------------------------- GenBank


def test_genbank_reader_order_strand_metadata_translation(tmp_path):
    (g,) = read_genbank(_write(tmp_path, "toy.gbk", TOY_GBK))
    assert g.genome_id == "TOYPHAGE"
    ids = [p.protein_id for p in g.proteins]
    assert ids == ["TOY_0001", "TOY_0002", "TOY_0003"]  # start order; the /pseudo CDS has no protein
    p1, p2, p3 = g.proteins
    assert (p1.sequence, p1.start, p1.end, p1.strand, p1.product) == ("MAGW", 1, 30, 1, "tail fiber")
    assert p2.sequence == "MKLV" and p2.strand == -1 and p2.phrog == "559"  # '*' dropped
    assert p2.function == "DNA, RNA and nucleotide metabolism"  # reassembled from two qualifiers
    assert p2.category == "DNA, RNA and nucleotide metabolism"
    assert p3.sequence == "MKW"  # no /translation: translated from the record's sequence
    assert p3.category is None


def test_phrog_category_reassembly():
    assert phrog_category("moron, auxiliary metabolic gene and host takeover") in PHROG_CATEGORIES
    assert phrog_category("moron,  auxiliary metabolic gene and host takeover") == (
        "moron, auxiliary metabolic gene and host takeover"
    )
    assert phrog_category("Head and packaging") == "head and packaging"
    assert phrog_category("structural protein") is None and phrog_category(None) is None
    assert len(PHROG_CATEGORIES) == 10


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("empty.gbk", "", "empty"),
        ("fasta.gbk", ">a\nMKV\n", "no GenBank records"),
        ("trunc.gbk", "\n".join(TOY_GBK.splitlines()[:20]) + "\n", "malformed GenBank"),
        ("badloc.gbk", TOY_GBK.replace("complement(40..60)", "bogus..where"), "TOY_0002"),
        ("emptytr.gbk", TOY_GBK.replace('"magw"', '""'), "TOY_0001"),
        ("nocds.gbk", TOY_GBK.split("     CDS")[0] + "ORIGIN" + TOY_GBK.split("ORIGIN")[1], "no CDS"),
    ],
)
def test_genbank_malformed_is_one_line_error(tmp_path, name, text, fragment):
    p = _write(tmp_path, name, text)
    with warnings.catch_warnings(), pytest.raises(UserError) as e:
        warnings.simplefilter("ignore")  # Biopython warns about what it then fails on
        read_genbank(p)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert name in str(e.value) or str(tmp_path) in str(e.value)


def test_genbank_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_genbank(tmp_path / "absent.gbk")


@pytest.mark.needs_shared_data
def test_pharokka_genbank_real():
    genomes = read_genbank(shared_data("genomes", "pharokka_meta_phages.gbk"))
    assert len(genomes) == 5
    assert sum(len(g.proteins) for g in genomes) == 559
    cats = [p.category for g in genomes for p in g.proteins]
    assert all(c in PHROG_CATEGORIES for c in cats)  # every /function reassembles to a category
    assert cats.count("DNA, RNA and nucleotide metabolism") == 62
    for g in genomes:
        starts = [p.start for p in g.proteins]
        assert starts == sorted(starts)
    first = genomes[0].proteins[0]
    assert first.protein_id == "MW460250_1_CDS_0001" and first.strand == -1
    assert first.sequence.startswith("MSKHIEITMSSG") and not first.sequence.endswith("*")
    check_unique_protein_ids(genomes)


# ----------------------------------------------------------------------------- FASTA


def test_prodigal_fasta_real_phage():
    (g,) = read_protein_fasta(resolve_data_path("package:pyrodigal_gv/tests/phage_Agate.faa"))
    assert g.genome_id == "Cattle_ERR2019372_scaffold_259737"
    assert len(g.proteins) == 203
    assert [p.protein_id for p in g.proteins[:2]] == [f"{g.genome_id}_1", f"{g.genome_id}_2"]
    assert (g.proteins[0].start, g.proteins[0].end, g.proteins[0].strand) == (415, 876, -1)
    assert all(not p.sequence.endswith("*") for p in g.proteins)


def test_fasta_rules_group_and_order(tmp_path):
    fa = _write(
        tmp_path,
        "mix.faa",
        ">cA_2 # 40 # 60 # 1 # x\nMKV\n>cB_1 # 1 # 9 # -1 # x\nMW\n>cA_1 # 1 # 30 # 1 # x\nMAG*\n>cA_10 # 99 # 120 # 1 # x\nMQ\n",
    )
    gs = {g.genome_id: g for g in read_protein_fasta(fa)}
    assert [p.protein_id for p in gs["cA"].proteins] == ["cA_1", "cA_2", "cA_10"]  # numeric order
    assert [p.protein_id for p in gs["cB"].proteins] == ["cB_1"]
    assert gs["cA"].proteins[0].sequence == "MAG"
    # regex rule: genome from a header field, file order kept (no order group)
    fa2 = _write(tmp_path, "rx.faa", ">p1 genome=G2\nMK\n>p2 genome=G1\nMV\n>p3 genome=G2\nMW\n")
    gs = {g.genome_id: g for g in read_protein_fasta(fa2, r"regex:\S+ genome=(?P<genome>\S+)")}
    assert [p.protein_id for p in gs["G2"].proteins] == ["p1", "p3"]
    # file rule and a protein -> genome table with an order column
    (whole,) = read_protein_fasta(fa2, "file")
    assert whole.genome_id == "rx" and len(whole.proteins) == 3
    table = _write(tmp_path, "t.tsv", "# protein genome order\np1\tX\t2\np2\tX\t1\np3\tY\n")
    gs = {g.genome_id: g for g in read_protein_fasta(fa2, protein_table=table)}
    assert [p.protein_id for p in gs["X"].proteins] == ["p2", "p1"]


@pytest.mark.parametrize(
    "text, rule, table, fragment",
    [
        (">p1\nMK\n", "prodigal", None, "does not match genome rule"),
        ("MK\n>p1_1\nMK\n", "prodigal", None, "before the first '>'"),
        (">p1_1\nMK\n>p1_1\nMV\n", "prodigal", None, "duplicate protein id"),
        (">p1_1\n*\n", "prodigal", None, "p1_1"),
        (">p1\nMK\n", "regex:(?P<g>\\S+)", None, "named group"),
        (">p1\nMK\n", "regex:(?P<genome>[", None, "bad regular expression"),
        (">p1\nMK\n", "by-magic", None, "expected 'prodigal'"),
        (">p1\nMK\n>p2\nMV\n", "prodigal", "p1\tG\n", "not in the protein table"),
        (">p1\nMK\n", "prodigal", "p1\tG\tfirst\n", "not an integer"),
        (">p1\nMK\n", "prodigal", "p1\n", "protein<TAB>genome"),
        ("", "prodigal", None, "empty"),
    ],
)
def test_fasta_malformed_is_one_line_error(tmp_path, text, rule, table, fragment):
    fa = _write(tmp_path, "bad.faa", text)
    tab = _write(tmp_path, "table.tsv", table) if table is not None else None
    with pytest.raises(UserError) as e:
        read_protein_fasta(fa, rule, tab)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_duplicate_protein_ids_across_genomes():
    with pytest.raises(UserError, match="must be unique"):
        check_unique_protein_ids([_genome([3], "a"), Genome("b", [GenomeProtein("a_0", "MK")])])


def test_resolve_data_path(monkeypatch, tmp_path):
    monkeypatch.setenv("LCPLM_DATA_DIR", str(tmp_path))
    assert resolve_data_path("shared:genomes/x.gbk") == tmp_path / "genomes" / "x.gbk"
    assert resolve_data_path("package:pyrodigal_gv/tests/phage_Topaz.faa").is_file()
    with pytest.raises(UserError, match="not installed"):
        resolve_data_path("package:no_such_pkg_xyz/a.faa")


# ----------------------------------------------------------------------------- windows


def test_window_tokens_and_pid_of_special_tokens():
    g = _genome([3, 2, 4])
    (w,) = genome_windows(g, 100)
    ids, pid = w.input_ids.tolist(), w.pid.tolist()
    # every protein framed <cls> P <eos> as ESM-2 frames a sequence; its specials are its own
    assert [i for i, t in enumerate(ids) if t == tokenizer.CLS] == [0, 5, 9]
    assert [i for i, t in enumerate(ids) if t == tokenizer.EOS] == [4, 8, 14]
    assert tokenizer.SEP not in ids
    assert pid == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert tokenizer.decode(w.input_ids, skip_special_tokens=True) == "".join(p.sequence for p in g.proteins)
    mask = protein_residue_mask(w.input_ids, w.pid, 3)
    assert mask.sum(1).tolist() == [3, 2, 4]


@pytest.mark.parametrize("seed", range(5))
def test_windows_split_only_at_protein_boundaries(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 60))]
    g = _genome(lengths, rng=rng)
    max_tokens = rng.choice([64, 257, 1000, 5000])
    windows = genome_windows(g, max_tokens)
    seen = []
    for w in windows:
        assert len(w) <= max_tokens
        ids = w.input_ids
        assert torch.equal(w.pid, torch.sort(w.pid).values) and int(w.pid.min()) == 0
        assert int(w.pid.max()) == len(w.proteins) - 1
        for k, p in enumerate(w.proteins):
            own = ids[w.pid == k]
            assert own[0] == tokenizer.CLS and own[-1] == tokenizer.EOS  # ESM-2's framing, per protein
            got = tokenizer.decode(own[1:-1])
            assert got == p.sequence[: max_tokens - 2]  # whole proteins, cropped only when too long
            assert (p.protein_id in w.cropped) == (len(p.sequence) > max_tokens - 2)
        seen += w.protein_ids
        assert w.first_protein == len(seen) - len(w.proteins)
    assert seen == [p.protein_id for p in g.proteins]  # every protein once, in genome order
    # greedy: the next window's first protein would not have fitted in the previous window
    for a, b in zip(windows, windows[1:]):
        nxt = min(len(b.proteins[0].sequence), max_tokens - 2) + 2
        assert len(a) + nxt > max_tokens


def test_long_protein_cropped_alone():
    ws = genome_windows(_genome([5, 50, 5]), 20)
    assert [len(w.proteins) for w in ws] == [1, 1, 1]
    assert ws[1].cropped == ["g_1"] and len(ws[1]) == 20


# ----------------------------------------------------------------------------- pair sources


def _window(n: int):
    (w,) = genome_windows(_genome([4] * n), 10_000)
    return w


def _props(a: torch.Tensor, n: int) -> None:
    assert a.shape == (n, n) and a.dtype == torch.bool
    assert a.diagonal().all()
    assert torch.equal(a, a.T)


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_static_pair_sources(n):
    w = _window(n)
    dense = build_pair_source(PairSourceConfig("dense")).allowed(w)
    single = build_pair_source(PairSourceConfig("single_protein")).allowed(w)
    _props(dense, n)
    _props(single, n)
    assert dense.all() and int(single.sum()) == n
    for width in (0, 1, 3):
        a = build_pair_source(PairSourceConfig("window", window=width)).allowed(w)
        _props(a, n)
        i = torch.arange(n)
        assert torch.equal(a, (i[:, None] - i[None, :]).abs() <= width)  # exactly the band
        assert int(a.sum(1).max()) == min(n, 2 * width + 1)
    a = build_pair_source(PairSourceConfig("global", num_global=2)).allowed(w)
    _props(a, n)
    g = evenly_spaced(n, 2)
    assert a[g].all() and a[:, g].all()
    others = [i for i in range(n) if i not in g]
    assert int(a[others][:, others].sum()) == len(others)  # non-global pairs only on the diagonal


def test_static_matrices_have_one_home():
    """The allowed-pair builders live in lcplm_kernels.block_sparse_attn.layout only; lcplm.data
    imports them from there, which loads torch but neither Triton nor any higher lcplm layer."""
    import subprocess
    import sys

    from lcplm.data import pair_sources
    from lcplm_kernels.block_sparse_attn import layout

    for name in ("dense_allowed", "single_protein_allowed", "window_allowed", "global_allowed", "allowed_from_pairs"):
        assert getattr(pair_sources, name) is getattr(layout, name), name
    w = _window(9)
    assert torch.equal(build_pair_source(PairSourceConfig("window", window=2)).allowed(w), layout.window_allowed(9, 2))
    probe = ("import sys, lcplm.data.pair_sources; "
             "print(sorted(m for m in ('triton', 'lightning', 'lcplm.models', 'lcplm.tasks') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_edge_list_and_ppi_source(tmp_path):
    g = _genome([4] * 6)
    edges = _write(
        tmp_path,
        "edges.txt",
        "protein1 protein2 combined_score\n# comment\ng_0 g_3 1\ng_1 g_2 0\ng_4 g_5 900\nother_1 g_0 1\n",
    )
    assert read_edges(edges).pair_set() == {frozenset(("g_0", "g_3")), frozenset(("g_4", "g_5")), frozenset(("other_1", "g_0"))}
    src = build_pair_source(PairSourceConfig("ppi", edges=str(edges)), [g])
    (w,) = genome_windows(g, 1000)
    a = src.allowed(w)
    _props(a, 6)
    want = torch.eye(6, dtype=torch.bool)
    for i, j in [(0, 3), (4, 5)]:
        want[i, j] = want[j, i] = True
    assert torch.equal(a, want)  # label-0 pair dropped, pair with an unknown protein ignored
    # windows: a pair split across windows is not in either
    w1, w2 = genome_windows(g, 16)[:2]
    assert build_pair_source(PairSourceConfig("ppi", edges=str(edges)), [g]).allowed(w1).sum() == len(w1.proteins)


@pytest.mark.parametrize(
    "text, fragment",
    [("a b c d\n", "expected 'id1 id2"), ("a b 1\nc d high\n", "not a number"), ("# only comments\n", "no data lines")],
)
def test_edge_list_malformed(tmp_path, text, fragment):
    with pytest.raises(UserError, match=fragment):
        read_edges(_write(tmp_path, "e.txt", text))


def test_ppi_source_errors(tmp_path):
    g = _genome([4] * 3)
    with pytest.raises(UserError, match="needs 'edges'"):
        build_pair_source(PairSourceConfig("ppi"), [g])
    edges = _write(tmp_path, "e.txt", "x y\n")
    with pytest.raises(UserError, match="none of its 1 pairs"):
        build_pair_source(PairSourceConfig("ppi", edges=str(edges)), [g])
    with pytest.raises(UserError, match="not found"):
        build_pair_source(PairSourceConfig("ppi", edges=str(tmp_path / "nope.txt")), [g])
    with pytest.raises(UserError, match="coordinates"):
        build_pair_source(PairSourceConfig("ppi", neighbourhood_max_gap=50), [g])


def test_neighbourhood_pairs_follow_strand_and_gaps():
    ps = [
        GenomeProtein("a", "MK", 1, 90, 1),
        GenomeProtein("b", "MK", 100, 200, 1),  # gap 9 -> same run as a
        GenomeProtein("c", "MK", 205, 300, 1),  # gap 4 -> same run
        GenomeProtein("d", "MK", 310, 400, -1),  # strand change -> new run
        GenomeProtein("e", "MK", 900, 990, -1),  # gap 499 -> new run
    ]
    pairs = neighbourhood_pairs([Genome("g", ps)], max_gap=50)
    assert pairs == {frozenset(p) for p in [("a", "b"), ("a", "c"), ("b", "c")]}


@pytest.mark.parametrize("k", [0, 1, 2, 10])
def test_scored_source_top_k(tmp_path, k):
    n = 6
    g = _genome([4] * n)
    rng = random.Random(1)
    lines = [f"g_{i}\tg_{j}\t{rng.random():.6f}" for i in range(n) for j in range(i + 1, n)]
    scores = _write(tmp_path, "s.tsv", "# id1 id2 score\n" + "\n".join(lines) + "\n")
    (w,) = genome_windows(g, 1000)
    a = build_pair_source(PairSourceConfig("scored", scores=str(scores), top_k=k)).allowed(w)
    _props(a, n)
    s = torch.full((n, n), float("-inf"))
    for line in lines:
        x, y, v = line.split("\t")
        i, j = int(x[2:]), int(y[2:])
        s[i, j] = s[j, i] = float(v)
    kk = min(k, n - 1)
    for i in range(n):
        top = set(s[i].topk(kk).indices.tolist()) if kk else set()
        assert all(a[i, j] for j in top)  # own top-k kept
        assert int(a[i].sum()) - 1 >= kk
    # union of per-protein top-k, nothing else
    want = torch.eye(n, dtype=torch.bool)
    if kk:
        idx = s.topk(kk, dim=1).indices
        want[torch.arange(n)[:, None].expand_as(idx), idx] = True
        want |= want.T.clone()
    assert torch.equal(a, want)


def test_scored_source_needs_file(tmp_path):
    with pytest.raises(UserError, match="needs 'scores'"):
        build_pair_source(PairSourceConfig("scored"))
    with pytest.raises(UserError, match="lcplm genome pair-scores"):
        build_pair_source(PairSourceConfig("scored", scores=str(tmp_path / "missing.tsv")))
    bad = _write(tmp_path, "bad.tsv", "a b\n")
    with pytest.raises(UserError, match="expected 'id1 id2 score'"):
        build_pair_source(PairSourceConfig("scored", scores=str(bad)))


def test_unknown_pair_source():
    with pytest.raises(UserError, match="pair_source.name"):
        build_pair_source(PairSourceConfig("psychic"))


# ----------------------------------------------------------------------------- datamodule


def _fasta_genomes(tmp_path: Path, n_genomes: int = 4, n_prot: int = 7) -> Path:
    rng = random.Random(3)
    aa = tokenizer.STANDARD_AMINO_ACIDS
    lines = []
    pos = 1
    for g in range(n_genomes):
        for i in range(1, n_prot + 1):
            n = rng.randint(20, 120)
            lines.append(f">c{g}_{i} # {pos} # {pos + 3 * n} # {rng.choice([1, -1])} # ID=x")
            lines.append("".join(rng.choice(aa) for _ in range(n)))
            pos += 3 * n + rng.randint(0, 80)
    return _write(tmp_path, "genomes.faa", "\n".join(lines) + "\n")


def _datamodule(tmp_path: Path, **kw):
    from lcplm.data.datamodules.genome import GenomeDataConfig, GenomeDataModule

    cfg = GenomeDataConfig(fasta=[str(_fasta_genomes(tmp_path))], max_tokens=256, batch_size=3, val_genomes=["c3"])
    for k, v in kw.items():
        setattr(cfg, k, v)
    dm = GenomeDataModule(cfg, seed=5)
    dm.setup()
    return dm


def _check_batch(batch: dict, max_tokens: int) -> None:
    ids, labels, lengths, pid, allowed = (batch[k] for k in ("input_ids", "labels", "lengths", "pid", "allowed"))
    B, L = ids.shape
    assert set(batch) == {"input_ids", "labels", "lengths", "pid", "allowed"}
    assert ids.dtype == labels.dtype == lengths.dtype == pid.dtype == torch.long and allowed.dtype == torch.bool
    assert labels.shape == pid.shape == (B, L) and lengths.shape == (B,) and L % 8 == 0
    assert int(lengths.max()) <= max_tokens
    pad = torch.arange(L)[None] >= lengths[:, None]
    assert torch.equal(pid < 0, pad) and (ids[pad] == tokenizer.PAD).all()
    P = allowed.shape[-1]
    assert allowed.shape == (B, P, P) and int(pid.max()) == P - 1
    for b in range(B):
        n = int(pid[b].max()) + 1
        assert allowed[b, :n, :n].diagonal().all() and not allowed[b, n:].any() and not allowed[b, :, n:].any()
    target = labels != -100
    assert tokenizer.is_residue(labels.clamp_min(0))[target].all()
    assert (ids[~target] != tokenizer.MASK).all()  # only targets are corrupted


def test_datamodule_batches_follow_the_contract(tmp_path):
    dm = _datamodule(tmp_path, pair_source=PairSourceConfig("window", window=1))
    train_ids = {w.genome_id for w in dm.train_set.windows}
    assert train_ids == {"c0", "c1", "c2"} and {w.genome_id for w in dm.val_set.windows} == {"c3"}
    batches = list(dm.train_dataloader())
    assert len(batches) == -(-len(dm.train_set) // 3)
    n_targets = 0
    for batch in batches + list(dm.val_dataloader()):
        _check_batch(batch, 256)
        a = batch["allowed"]
        for b in range(a.shape[0]):
            n = int(batch["pid"][b].max()) + 1
            i = torch.arange(n)
            assert torch.equal(a[b, :n, :n], (i[:, None] - i[None, :]).abs() <= 1)
        n_targets += int((batch["labels"] != -100).sum())
    n_res = sum(int(tokenizer.is_residue(w.input_ids).sum()) for w in dm.train_set.windows + dm.val_set.windows)
    assert 0.10 < n_targets / n_res < 0.20  # about 15% of residues are targets


def test_datamodule_is_seeded_and_resumes_exactly(tmp_path):
    from lcplm.data.batching import FixedSizeBatchSampler

    a = [b["input_ids"] for b in _datamodule(tmp_path).train_dataloader()]
    b = [b["input_ids"] for b in _datamodule(tmp_path).train_dataloader()]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    val1 = [b["labels"] for b in _datamodule(tmp_path).val_dataloader()]
    val2 = [b["labels"] for b in _datamodule(tmp_path).val_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(val1, val2))  # fixed validation targets
    def keys(rank=0, world=1, epoch=2, skip=0):
        s = FixedSizeBatchSampler(23, 3, seed=1, num_replicas=world, rank=rank)
        s.set_epoch(epoch)
        s.skip_batches(skip)
        return [(k.epoch, k.position, k.indices.tolist()) for k in s]

    full = keys()
    assert keys(skip=3) == full[3:]
    assert keys(epoch=3) != full  # new epoch, new order
    r0, r1 = keys(rank=0, world=2), keys(rank=1, world=2)
    assert [k[1:] for k in r0] == [k[1:] for k in full[0:8:2]] and [k[1:] for k in r1] == [k[1:] for k in full[1:8:2]]


def test_datamodule_errors(tmp_path):
    from lcplm.data.datamodules.genome import GenomeDataConfig, GenomeDataModule

    with pytest.raises(UserError, match="no genomes"):
        GenomeDataModule(GenomeDataConfig()).setup()
    with pytest.raises(UserError, match="unknown genome"):
        _datamodule(tmp_path, val_genomes=["nope"])
    with pytest.raises(UserError, match="every genome is held out"):
        _datamodule(tmp_path, val_genomes=["c0", "c1", "c2", "c3"])
    with pytest.raises(UserError, match="more than one"):
        _datamodule(tmp_path, fasta=[str(_fasta_genomes(tmp_path))] * 2)


@pytest.mark.needs_shared_data
def test_datamodule_real_phages_dense_single():
    from lcplm.data.datamodules.genome import GenomeDataConfig, GenomeDataModule

    shared_data("genomes", "pharokka_meta_phages.gbk")
    for source in ("dense", "single_protein"):
        cfg = GenomeDataConfig(
            genbank=["shared:genomes/pharokka_meta_phages.gbk"],
            fasta=["package:pyrodigal_gv/tests/phage_Agate.faa", "package:pyrodigal_gv/tests/phage_Topaz.faa"],
            max_tokens=2048,
            batch_size=4,
            val_genomes=["NC_007458.1"],
            pair_source=PairSourceConfig(source),
        )
        dm = GenomeDataModule(cfg)
        dm.setup()
        assert len({w.genome_id for w in dm.train_set.windows}) == 6
        batch = next(iter(dm.train_dataloader()))
        _check_batch(batch, 2048)
        n = batch["allowed"].sum(-1).float()
        if source == "single_protein":
            assert (n[batch["allowed"].diagonal(dim1=1, dim2=2)] == 1).all()
