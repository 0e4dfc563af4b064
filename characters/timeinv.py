"""TimeInv: a character token that owns one embedding per diffusion timestep, and the hook that uses it.

Animate-A-Story's timestep-variable textual inversion gives the new token a ``T x d`` table (``T`` = the
scheduler's training timesteps, 1000 for SD1.5; ``d`` = the text encoder's width) instead of one vector: a
training step at timestep ``t`` updates row ``t``, and at render time denoising step ``t`` embeds the token
with row ``t``. With few images ``buckets=B`` shares rows over ``B`` equal timestep ranges: timestep ``t``
uses row ``floor(t * B / T)`` (``B = T`` is one row per timestep).

The rows reach the text encoder through :class:`TokenEmbeddingHook`, a forward hook on
``text_encoder.get_input_embeddings()``: wherever the token's id appears in the input ids, the embedding
layer's output is replaced by the table row of the current timestep (``torch.where``, so gradients flow to
the table during training). Anything that runs the text encoder sees it: a plain tokenizer +
text-encoder call, diffusers' ``encode_prompt`` or compel. Outside a timestep (``timesteps is None``) the
hook changes nothing and the token keeps whatever row the embedding matrix holds for it (the time-averaged
embedding, see :class:`characters.character_set.CharacterSet`).

Untrained rows. Training draws one timestep per video uniformly from ``[0, T)``, so with ``S`` steps of batch
``b`` a row is never drawn with probability ``(1 - 1/B) ** (S * b)``: at the paper's setting (``B = T = 1000``,
1000 steps, batch 1) that is ``e^-1``, 37% of the rows, and a 25-step DDIM, Euler or DPM++ render reads
about 9 of its 25 rows still at the class word's value. The character file therefore never holds an
untrained row: :func:`fill_untrained_rows` derives each one from its nearest trained neighbours (linear
interpolation in timestep, the nearest trained row past either end). Neighbouring timesteps are nearly
the same noise level, and the table is meant to change smoothly with it, so a neighbour is a far better
estimate of a row than the class word it started at; the training itself is left as the paper's (a step
at ``t`` updates row ``t`` only, and no optimizer state is kept for rows it never reached). How many
updates each row got is recorded with the character (:func:`row_update_counts`, the file's ``training``
header) and ``train-character`` warns when a 25-step render would read a derived row; ``buckets`` below
1000 (``--buckets 50``: 20 timesteps a row) gives every row many updates instead.
"""

from __future__ import annotations

import torch


class TimeInvTable(torch.nn.Module):
    """``weight``: ``buckets x d`` rows for ``num_train_timesteps`` diffusion timesteps."""

    def __init__(self, rows: torch.Tensor, num_train_timesteps: int, trainable: bool = False):
        super().__init__()
        rows = torch.as_tensor(rows)
        if rows.ndim != 2 or rows.shape[0] < 1:
            raise ValueError(f"a TimeInv table is rows x d, got shape {tuple(rows.shape)}")
        if not 1 <= rows.shape[0] <= num_train_timesteps:
            raise ValueError(f"a TimeInv table has 1 to {num_train_timesteps} rows, got {rows.shape[0]}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.weight = torch.nn.Parameter(rows.detach().to(torch.float32).clone(), requires_grad=trainable)

    @property
    def buckets(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def row_index(self, timesteps) -> torch.Tensor:
        """Row of each timestep (int, float or tensor; floats round to the nearest training timestep)."""
        return row_index(timesteps, self.buckets, self.num_train_timesteps, device=self.weight.device)

    def forward(self, timesteps) -> torch.Tensor:
        """The rows of ``timesteps``: ``(..., d)``."""
        return self.weight[self.row_index(timesteps)]

    def time_average(self) -> torch.Tensor:
        """The mean embedding over all training timesteps (each timestep counts once): ``d``."""
        counts = torch.bincount(self.row_index(torch.arange(self.num_train_timesteps)), minlength=self.buckets)
        weights = counts.to(self.weight) / self.num_train_timesteps
        return (weights[:, None] * self.weight).sum(0)


def row_index(timesteps, buckets: int, num_train_timesteps: int, device=None) -> torch.Tensor:
    """``floor(t * buckets / T)`` for each timestep ``t`` in ``[0, T)``, as a long tensor."""
    t = torch.as_tensor(timesteps, device=device)
    if t.is_floating_point():
        t = t.round()
    t = t.to(torch.long).clamp(0, num_train_timesteps - 1)
    if buckets == num_train_timesteps:
        return t
    return torch.div(t * buckets, num_train_timesteps, rounding_mode="floor").clamp(0, buckets - 1)


def row_update_counts(timesteps, buckets: int, num_train_timesteps: int) -> torch.Tensor:
    """How many of ``timesteps`` fall on each of the ``buckets`` rows: a long tensor of ``buckets`` counts."""
    rows = row_index(timesteps, buckets, num_train_timesteps).reshape(-1).cpu()
    return torch.bincount(rows, minlength=buckets)


def fill_untrained_rows(rows: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    """``rows`` with each row of zero ``updates`` derived from the trained rows (see the module docstring).

    Between two trained rows ``a < r < b`` row ``r`` is ``rows[a] + (r - a) / (b - a) * (rows[b] - rows[a])``;
    before the first or after the last trained row it is a copy of that row. Trained rows are returned as
    they are; with no trained row at all nothing can be derived and ``rows`` comes back unchanged (a copy).
    """
    rows = torch.as_tensor(rows)
    updates = torch.as_tensor(updates).reshape(-1).to(rows.device)
    if updates.numel() != rows.shape[0]:
        raise ValueError(f"{updates.numel()} update counts for a table of {rows.shape[0]} rows")
    trained = torch.nonzero(updates > 0).reshape(-1)
    out = rows.detach().clone()
    if trained.numel() == 0 or trained.numel() == rows.shape[0]:
        return out
    untrained = torch.nonzero(updates <= 0).reshape(-1)
    above = torch.searchsorted(trained, untrained)  # index in ``trained`` of the first trained row past each one
    right = trained[above.clamp(max=trained.numel() - 1)]
    left = trained[(above - 1).clamp(min=0)]
    right = torch.where(above >= trained.numel(), left, right)  # past the last trained row: copy it
    left = torch.where(above == 0, right, left)  # before the first trained row: copy it
    span = (right - left).clamp(min=1).to(out.dtype)
    weight = ((untrained - left).to(out.dtype) / span)[:, None]
    out[untrained] = out[left] + weight * (out[right] - out[left])
    return out


def rows_read_by_render(scheduler_name: str, buckets: int, num_train_timesteps: int, steps: int = 25) -> list[int]:
    """The table rows a ``steps``-step render with scheduler ``scheduler_name`` (``ddim``, ``euler``,
    ``dpmpp_2m``: :func:`storyreel.models.schedulers.make_scheduler`) reads, in timestep order, once each."""
    from storyreel.models.schedulers import make_scheduler

    scheduler = make_scheduler(scheduler_name, num_train_timesteps=num_train_timesteps)
    scheduler.set_timesteps(steps)
    rows = row_index(torch.as_tensor(scheduler.timesteps), buckets, num_train_timesteps).tolist()
    return sorted(set(rows))


def class_word_embedding(tokenizer, text_encoder, class_word: str) -> torch.Tensor:
    """The class word's input embedding (the mean of its tokens' rows when it is several tokens): ``d``."""
    ids = tokenizer(class_word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"the class word {class_word!r} gives no tokens")
    weight = text_encoder.get_input_embeddings().weight
    return weight[torch.tensor(ids, device=weight.device)].detach().to(torch.float32).mean(0).cpu()


def initial_table(tokenizer, text_encoder, class_word: str, buckets: int) -> torch.Tensor:
    """Every row set to the class word's embedding: ``buckets x d``."""
    return class_word_embedding(tokenizer, text_encoder, class_word)[None].repeat(buckets, 1)


class TokenEmbeddingHook:
    """A forward hook on an ``nn.Embedding`` that puts TimeInv rows at the positions of their tokens.

    ``tables`` maps token ids to :class:`TimeInvTable`; ``timesteps`` is None (no substitution), a number
    (every prompt of the batch) or a tensor with one timestep per prompt of the batch. ``observers`` are
    called with ``(token_id, row_indices)`` on every substitution (for tests and reports).
    """

    def __init__(self):
        self.tables: dict[int, TimeInvTable] = {}
        self.timesteps = None
        self.observers: list = []
        self._handle = None
        self._module = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def attach(self, embedding: torch.nn.Module) -> None:
        if self._module is embedding:
            return
        self.detach()
        self._handle = embedding.register_forward_hook(self)
        self._module = embedding

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._module = None

    def _batch_timesteps(self, batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(self.timesteps, device=device)
        if t.ndim == 0:
            return t.expand(batch)
        t = t.reshape(-1)
        if t.numel() != batch:
            raise ValueError(f"{t.numel()} timesteps for a batch of {batch} prompts")
        return t

    def __call__(self, module, args, output):
        if self.timesteps is None or not self.tables or not args:
            return None
        ids = args[0]
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            return None
        out = output
        timesteps = None
        for token_id, table in self.tables.items():
            mask = ids == token_id
            if not bool(mask.any()):
                continue
            if timesteps is None:
                timesteps = self._batch_timesteps(ids.shape[0], table.weight.device)
            index = table.row_index(timesteps)
            rows = table.weight[index].to(device=out.device, dtype=out.dtype)
            out = torch.where(mask[..., None], rows[:, None, :], out)
            for observer in self.observers:
                observer(token_id, index.detach().cpu())
        return out
