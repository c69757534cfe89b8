"""The student's KV-cache paths and the attention masks they share with training.

`KVCache` holds the three cache entry points of `Student` (runtime/model/student.py), which mixes it in:
`prefill` writes positions 0..T-1, `decode` one position, `extend` T positions from a given one (speculative
decoding's verify). Caches are `[n_layers, B, n_kv_heads, cache_len, d_head]` and updated functionally: each
returns the new caches. The helpers say which keys a query may see (`allowed_mask`, `right_padded`) and which
cache positions a write covers (`span`); the export wrappers (runtime/export/wrappers.py) use them too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

KVFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def right_padded(attention_mask: Tensor | None) -> bool:
    """No mask, or every row's real tokens come first (1..1 0..0): causal attention alone then masks
    exactly what causal + key padding does at every real position."""
    if attention_mask is None:
        return True
    m = attention_mask != 0
    return bool((m[:, 1:] <= m[:, :-1]).all())


def allowed_mask(q_pos: Tensor, k_pos: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Boolean `[B|1, 1, Tq, Tk]`: key position <= query position (and the key is real)."""
    allowed = k_pos[:, None, None, :] <= q_pos[:, None, :, None]
    if key_mask is not None:
        allowed = allowed & (key_mask[:, None, None, :] != 0)
    return allowed


def span(k_pos: Tensor, start: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """Which cache positions `[1, 1, S, 1]` a write of t tokens at `start` covers, and for each
    position the index of its token among the t (0 where none: discarded by the mask)."""
    rel = k_pos - start
    written = torch.logical_and(rel >= 0, rel < t)  # coremltools converts logical_and, not &
    return written.view(1, 1, -1, 1), torch.where(written, rel, torch.zeros_like(rel))


class KVCache:
    """The cache entry points; the host class provides `_layers`, `_logits`, `run_layers`, `layers`, `arch`
    and `embed_tokens`."""

    def prefill(self, input_ids: Tensor, key_cache: Tensor, value_cache: Tensor,
                last_only: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Run T tokens at positions 0..T-1, writing them to cache positions 0..T-1. `last_only`: logits of
        the last position only (`[B, 1, V]`; what generation reads), not a `[B, T, V]` tensor."""
        t = input_ids.shape[1]
        if t > key_cache.shape[3]:
            raise ValueError(f"prefill length {t} exceeds the cache length {key_cache.shape[3]}")
        pos = torch.arange(t, device=input_ids.device)[None]
        new_k: list[Tensor] = []
        new_v: list[Tensor] = []

        def writer(i: int) -> KVFn:
            def write(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
                new_k.append(torch.cat([k.to(key_cache.dtype), key_cache[i, :, :, t:]], dim=2))
                new_v.append(torch.cat([v.to(value_cache.dtype), value_cache[i, :, :, t:]], dim=2))
                return k, v
            return write

        h = self._layers(input_ids, pos, allowed_mask(pos, pos), [writer(i) for i in range(len(self.layers))])
        logits = self._logits(h[:, -1:] if last_only else h)
        return logits, torch.stack(new_k), torch.stack(new_v)

    def decode(self, input_ids: Tensor, position: Tensor, key_cache: Tensor,
               value_cache: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One token `[B, 1]` at `position` (`[1]` int tensor): write it, attend to cache <= position."""
        cache_len = key_cache.shape[3]
        k_pos = torch.arange(cache_len, device=input_ids.device)
        q_pos = position.reshape(1, 1).to(k_pos.dtype)
        hit = (k_pos == q_pos.reshape(1)).view(1, 1, cache_len, 1)
        new_k: list[Tensor] = []
        new_v: list[Tensor] = []

        def writer(i: int) -> KVFn:
            def write(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
                k_all = torch.where(hit, k.to(key_cache.dtype), key_cache[i])
                v_all = torch.where(hit, v.to(value_cache.dtype), value_cache[i])
                new_k.append(k_all)
                new_v.append(v_all)
                return k_all, v_all
            return write

        allowed = allowed_mask(q_pos, k_pos[None])
        logits = self.run_layers(input_ids, q_pos, allowed, [writer(i) for i in range(len(self.layers))])
        return logits, torch.stack(new_k), torch.stack(new_v)

    def extend(self, input_ids: Tensor, position: Tensor, key_cache: Tensor,
               value_cache: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """T tokens `[B, T]` at positions `position` .. `position` + T - 1 (`position` a `[1]` int tensor):
        written to the cache, each attending to the cache at positions <= its own (speculative decoding's
        verify). Cache entries past the last written position (a rejected draft's) are neither read nor
        changed: the next call at the first rejected position overwrites them. T = 1 is `decode`."""
        t = input_ids.shape[1]
        cache_len = key_cache.shape[3]
        k_pos = torch.arange(cache_len, device=input_ids.device)
        start = position.reshape(1).to(k_pos.dtype)
        q_pos = (start + torch.arange(t, device=input_ids.device))[None]
        written, index = span(k_pos, start, t)
        new_k: list[Tensor] = []
        new_v: list[Tensor] = []

        def writer(i: int) -> KVFn:
            def write(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
                k_all = torch.where(written, k.to(key_cache.dtype).index_select(2, index), key_cache[i])
                v_all = torch.where(written, v.to(value_cache.dtype).index_select(2, index), value_cache[i])
                new_k.append(k_all)
                new_v.append(v_all)
                return k_all, v_all
            return write

        logits = self.run_layers(input_ids, q_pos, allowed_mask(q_pos, k_pos[None]), [writer(i) for i in range(len(self.layers))])
        return logits, torch.stack(new_k), torch.stack(new_v)

    def empty_cache(self, batch: int, cache_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Zero key and value caches `[n_layers, B, n_kv_heads, cache_len, d_head]` (default max_context)."""
        a = self.arch
        w = self.embed_tokens.weight
        shape = (a.n_layers, batch, a.n_kv_heads, cache_len or a.max_context, a.d_head)
        return torch.zeros(shape, dtype=w.dtype, device=w.device), torch.zeros(shape, dtype=w.dtype, device=w.device)
