"""Sparse teacher logprobs: the k+1-outcome KL (runtime/train/sparse_kl.py) and its memory-mapped
store (runtime/generation/sparse.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime.generation.sparse import SparseStore, SparseStoreError, SparseWriter, log_tail
from runtime.jobs.teacher_targets import topk_rows
from runtime.train.losses import kl_topk
from runtime.train.sparse_kl import kl_sparse_tail

REPO = Path(__file__).resolve().parents[2]


def collapsed_kl(p_full: torch.Tensor, q_full: torch.Tensor, ids: list[int]) -> float:
    """Dense reference: KL on the outcomes (ids..., everything else) from two full distributions."""
    p = torch.cat([p_full[ids], (1 - p_full[ids].sum()).reshape(1)])
    q = torch.cat([q_full[ids], (1 - q_full[ids].sum()).reshape(1)])
    live = p > 0
    return float((p[live] * (p[live].log() - q[live].log())).sum())


def teacher_student(b=3, t=4, v=50, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, t, v, generator=g, dtype=torch.float64) * scale
    student = torch.randn(b, t, v, generator=g, dtype=torch.float64) * scale
    return teacher, student, g


@pytest.mark.parametrize("pick", ["teacher_topk", "random_ids"])
def test_sparse_kl_equals_dense_kl_on_collapsed_support(pick):
    teacher, student, g = teacher_student()
    k = 5
    lp_full = F.log_softmax(teacher, -1)
    if pick == "teacher_topk":
        ids = lp_full.topk(k, -1).indices
    else:
        ids = torch.stack([torch.randperm(50, generator=g)[:k] for _ in range(12)]).reshape(3, 4, k)
    lp = lp_full.gather(-1, ids)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)
    p_full, q_full = lp_full.exp(), F.softmax(student, -1)
    ref = [collapsed_kl(p_full[i, j], q_full[i, j], ids[i, j].tolist()) for i in range(3) for j in range(4) if mask[i, j]]
    ref = sum(ref) / len(ref)
    derived = kl_sparse_tail(student, ids, lp, mask, 1.0)
    stored = kl_sparse_tail(student, ids, lp, mask, 1.0, teacher_log_tail=torch.from_numpy(log_tail(lp.numpy())))
    assert ref > 0.01
    assert abs(derived.item() - ref) < 1e-6 and abs(stored.item() - ref) < 1e-6


def test_k_equal_to_vocab_is_the_full_kl():
    teacher, student, g = teacher_student(v=50)
    ids = torch.stack([torch.randperm(50, generator=g) for _ in range(12)]).reshape(3, 4, 50)  # any order
    lp_full = F.log_softmax(teacher, -1)
    mask = torch.ones(3, 4, dtype=torch.bool)
    full = (lp_full.exp() * (lp_full - F.log_softmax(student, -1))).sum(-1).mean()
    got = kl_sparse_tail(student, ids, lp_full.gather(-1, ids), mask, 1.0)
    assert abs(got.item() - full.item()) < 1e-6


class Bigram(torch.nn.Module):
    """A causal LM whose next-token distribution depends on the last token only; it answers the
    interface `jobs.teacher_targets.topk_rows` uses, so targets come from the real teacher code."""

    def __init__(self, v: int, h: int = 16):
        super().__init__()
        torch.manual_seed(1)
        self.emb, self.head = torch.nn.Embedding(v, h), torch.nn.Linear(h, v, bias=False)
        with torch.no_grad():
            self.head.weight.mul_(3.0)

    def get_decoder(self):
        return lambda input_ids: SimpleNamespace(last_hidden_state=self.emb(input_ids))

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids):  # logits[:, t] predicts token t + 1 from tokens 0..t
        return self.head(self.emb(input_ids))


@torch.no_grad()
def test_alignment_target_t_describes_token_t_plus_1():
    v, k, n = 40, 8, 24
    model = Bigram(v)
    # greedy decoding from the teacher: its top-1 at position t IS token t+1
    tokens = [3]
    for _ in range(n - 1):
        tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    (ids, _), = topk_rows(model, [np.array(tokens)], k, torch.device("cpu"))
    assert (ids[:-1, 0] == np.array(tokens[1:])).all()
    # sparse targets (full-distribution logprobs) from the teacher job's code on a random sequence
    seq = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(2))
    (all_ids, all_logits), = topk_rows(model, [seq.numpy()], v, torch.device("cpu"))
    lp = torch.from_numpy(all_logits).double().log_softmax(-1)[None, :, :k]
    sp_ids = torch.from_numpy(all_ids).long()[None, :, :k]
    logits = model(seq[None]).double()  # the student is the teacher: KL 0 only if aligned
    loss_mask = torch.ones(1, n, dtype=torch.long)
    mask = loss_mask[:, 1:] > 0  # as losses.compute slices: positions 0..n-2, mask of token t+1
    aligned = kl_sparse_tail(logits[:, :-1], sp_ids[:, :-1], lp[:, :-1], mask, 1.0)
    late = kl_sparse_tail(logits[:, :-1], sp_ids[:, 1:], lp[:, 1:], mask, 1.0)
    early = kl_sparse_tail(logits[:, 1:-1], sp_ids[:, :-2], lp[:, :-2], mask[:, 1:], 1.0)
    assert aligned.item() < 1e-10 and late.item() > 0.1 and early.item() > 0.1
    # the dense term of losses.py, fed the same way, is minimal at the same alignment
    dense_ids, dense_logits = torch.from_numpy(all_ids).long()[None, :, :k], torch.from_numpy(all_logits)[None, :, :k]
    def dense(a: slice, b: slice) -> float:
        return kl_topk(logits[:, a].float(), dense_ids[:, b], dense_logits[:, b], mask[:, :n - 1 - (a.start or 0)], 1.0)

    ok = dense(slice(None, -1), slice(None, -1))
    assert ok < dense(slice(None, -1), slice(1, None)) and ok < dense(slice(1, -1), slice(None, -2))


def test_padding_entries_are_ignored():
    teacher, student, _ = teacher_student(b=2, t=3)
    lp_full = F.log_softmax(teacher, -1)
    ids = lp_full.topk(5, -1).indices
    lp = lp_full.gather(-1, ids)
    mask = torch.ones(2, 3, dtype=torch.bool)
    short = kl_sparse_tail(student, ids[..., :3], lp[..., :3], mask, 1.0)
    padded_ids, padded_lp = ids.clone(), lp.clone()
    padded_ids[..., 3:] = -1
    for garbage in (float("-inf"), 0.0, 5.0, float("nan")):
        padded_lp[..., 3:] = garbage
        assert abs(kl_sparse_tail(student, padded_ids, padded_lp, mask, 1.0).item() - short.item()) < 1e-12
    # a position with no entry at all costs nothing; garbage at unmasked positions never leaks
    none_ids = torch.full_like(ids, -1)
    assert kl_sparse_tail(student, none_ids, torch.zeros_like(lp), mask, 1.0).item() == pytest.approx(0, abs=1e-12)
    mask2 = mask.clone()
    mask2[1, 2] = False
    bad_lp = lp.clone()
    bad_lp[1, 2] = float("nan")
    clean = kl_sparse_tail(student, ids, lp, mask2, 1.0)
    assert kl_sparse_tail(student, ids, bad_lp, mask2, 1.0).item() == pytest.approx(clean.item(), abs=1e-12)


def _grad(student, ids, lp, mask, **kw):
    student = student.clone().requires_grad_(True)
    loss = kl_sparse_tail(student, ids, lp, mask, 1.0, **kw)
    loss.backward()
    return loss, student.grad


def test_gradients_finite_at_zero_tails():
    v, k = 50, 5
    teacher, student, _ = teacher_student(b=2, t=3, v=v)
    teacher, student = teacher.float(), student.float()
    ids = teacher.topk(k, -1).indices
    mask = torch.ones(2, 3, dtype=torch.bool)
    # teacher tail 0: all its mass on the k ids (sum may round above 1)
    lp0 = F.log_softmax(teacher.gather(-1, ids), -1)
    loss, grad = _grad(student, ids, lp0, mask)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # student puts ~all mass on the k ids (tail ~e^-120) while the teacher keeps 0.3 outside
    lp = torch.log(F.softmax(teacher.gather(-1, ids), -1) * 0.7)
    peaked = torch.full_like(student, -60.0).scatter(-1, ids, 60.0)
    loss, grad = _grad(peaked, ids, lp, mask)
    ref = kl_sparse_tail(peaked.double(), ids, lp.double(), mask, 1.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5) and loss.item() > 30
    outside = torch.ones_like(grad, dtype=torch.bool).scatter(-1, ids, False)
    assert (grad[outside] < 0).all()  # raising the mass outside the k ids lowers the loss
    # k = V and both tails 0; and an empty mask (0 with a zero gradient)
    all_ids = torch.arange(v).expand(2, 3, v)
    loss, grad = _grad(student, all_ids, F.log_softmax(teacher, -1), mask)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    loss, grad = _grad(student, ids, lp, torch.zeros_like(mask))
    assert loss.item() == 0 and (grad == 0).all()


def test_temperature_other_than_one_is_refused():
    teacher, student, _ = teacher_student()
    ids = teacher.topk(5, -1).indices
    with pytest.raises(ValueError, match="temperature must be 1"):
        kl_sparse_tail(student, ids, F.log_softmax(teacher, -1).gather(-1, ids), torch.ones(3, 4), 2.0)


def _sequences(n_seq=40, k=20, v=1000, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_seq):
        n = int(rng.integers(150, 350))
        logits = rng.normal(size=(n, v)) * 4
        lp_full = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ids = np.argsort(-lp_full, axis=1)[:, :k]
        lp = np.take_along_axis(lp_full, ids, 1)
        short = rng.random(n) < 0.1  # the server returned fewer alternatives
        ids[short, 15:], lp[short, 15:] = -1, -np.inf
        out.append((ids, lp, logits))
    return out


def test_store_round_trip_size_and_fp16_error(tmp_path):
    seqs = _sequences()
    with SparseWriter(tmp_path / "store", k=20, vocab_size=1000) as w:
        for i, (ids, lp, _) in enumerate(seqs):
            if i % 2:
                w.append(ids, lp)
            else:
                w.append_entries([[(int(a), float(b)) for a, b in zip(r, l) if a >= 0] for r, l in zip(ids, lp)])
    store = SparseStore(tmp_path / "store", vocab_size=1000)
    assert len(store) == 40 and store.n_tokens == sum(len(s[0]) for s in seqs) > 5_000
    assert isinstance(store.arrays["ids"], np.memmap) and isinstance(store.arrays["logprobs"], np.memmap)
    for i, (ids, lp, _) in enumerate(seqs):
        seq = store[i]
        assert np.array_equal(seq.ids, ids) and np.array_equal(seq.logprobs, lp.astype(np.float16))
        np.testing.assert_allclose(seq.log_tail, log_tail(lp), rtol=1e-6)
    bpt = store.bytes_per_token()
    print(f"bytes/token at k=20: {bpt:.2f}")
    assert bpt <= 130
    ids_b, lp_b, tail_b = store.padded([3, 0], 400)
    assert ids_b.shape == (2, 400, 20) and (ids_b[0, len(seqs[3][0]):] == -1).all()
    # float16 KL error against the unrounded logprobs, tail as stored
    n = 200
    student = torch.from_numpy(seqs[0][2][None, :n] + np.random.default_rng(1).normal(size=(1, n, 1000)))
    mask = torch.ones(1, n, dtype=torch.bool)
    exact = kl_sparse_tail(student, torch.from_numpy(seqs[0][0][None, :n]), torch.from_numpy(seqs[0][1][None, :n]), mask)
    stored = kl_sparse_tail(student, torch.from_numpy(ids_b[1:, :n]), torch.from_numpy(lp_b[1:, :n]).double(), mask,
                            teacher_log_tail=torch.from_numpy(tail_b[1:, :n]).double())
    assert abs(stored.item() - exact.item()) < 1e-4 * max(1.0, exact.item())


def _store(path, k=4):
    with SparseWriter(path, k=k) as w:
        w.append(np.array([[1, 2, 3, 4], [5, 6, -1, -1]]), np.log([[0.4, 0.3, 0.2, 0.05], [0.5, 0.25, 1, 1]]))
        w.append(np.array([[7, 8, 9, 10]]), np.log([[0.25, 0.25, 0.25, 0.25]]))
    return path


def _edit_meta(path, **changes):
    (path / "meta.json").write_text(json.dumps({**json.loads((path / "meta.json").read_text()), **changes}))


@pytest.mark.parametrize("damage,match", [
    (lambda p: (p / "meta.json").write_text("{not json"), "corrupt meta.json"),
    (lambda p: _edit_meta(p, format="v0"), "format"),
    (lambda p: _edit_meta(p, tokens=9), "meta.json says"),
    (lambda p: np.save(p / "logprobs.npy", np.zeros((3, 4), np.float32)), "float32 .* meta.json says float16"),
    (lambda p: np.save(p / "offsets.npy", np.array([0, 3, 1, 3])), "offsets"),
    (lambda p: np.save(p / "offsets.npy", np.array([0, 2, 1])), "monotonically"),
    (lambda p: os.truncate(p / "ids.npy", 140), "unreadable"),
    (lambda p: (p / "meta.json").unlink(), "not a finalised"),
])
def test_damaged_stores_are_rejected(tmp_path, damage, match):
    path = _store(tmp_path / "s")
    assert SparseStore(path)[0].ids.shape == (2, 4) and SparseStore(path)[1].log_tail[0] == -np.inf
    damage(path)
    with pytest.raises(SparseStoreError, match=match):
        SparseStore(path)


def test_ids_checked_against_vocab_and_bad_rows_refused(tmp_path):
    path = _store(tmp_path / "s")
    with pytest.raises(SparseStoreError, match=r"outside \[-1, 8\)"):
        SparseStore(path, vocab_size=8)
    with pytest.raises(SparseStoreError, match="exists"):
        SparseWriter(path, k=4)
    w = SparseWriter(tmp_path / "t", k=2, vocab_size=10)
    for ids, lp, match in [([[1, 1]], [[-1, -2]], "twice"), ([[1, 2, 3]], [[-1, -2, -3]], "k=2"),
                           ([[1, 10]], [[-1, -2]], "ids must lie"), ([[1, 2]], [[np.nan, -2]], "finite")]:
        with pytest.raises(SparseStoreError, match=match):
            w.append(np.array(ids), np.array(lp))
    w.abort()
    assert not list(tmp_path.glob(".t.partial-*"))
    with SparseWriter(path, k=2, overwrite=True) as w2:
        w2.append(np.array([[0, 1]]), np.log([[0.5, 0.5]]))
    assert SparseStore(path).k == 2 and not list(tmp_path.glob(".s.*"))


def test_killed_writer_leaves_nothing_readable(tmp_path):
    script = textwrap.dedent(f"""
        import os, numpy as np
        from runtime.generation.sparse import SparseWriter
        w = SparseWriter({str(tmp_path / 'store')!r}, k=3)
        w.append(np.array([[1, 2, 3]] * 50), np.log([[0.5, 0.2, 0.1]] * 50))
        for fh in w.files.values():
            fh.flush()
        os._exit(9)  # killed before finalise()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 9
    assert not (tmp_path / "store").exists()
    partial, = tmp_path.glob(".store.partial-*")
    assert (partial / "ids.npy").stat().st_size > 128
    with pytest.raises(SparseStoreError, match="not a finalised"):
        SparseStore(partial)
    with pytest.raises(ValueError):
        np.load(partial / "ids.npy", mmap_mode="r", allow_pickle=False)
    with pytest.raises(RuntimeError), SparseWriter(tmp_path / "other", k=3) as w:  # an exception aborts
        w.append(np.array([[1, 2, 3]]), np.log([[0.5, 0.2, 0.1]]))
        raise RuntimeError("boom")
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other.*"))
