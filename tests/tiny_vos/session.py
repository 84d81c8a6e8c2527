"""The tiny model's session: a memory of the last ``max_mem_frames`` memory frames (a ring of
slots in buffers allocated once, shaped as the ``memory_readout`` stage declares them), all objects
in one memory."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from vosrt.runtime.stage_batcher import StageBatcher
from vosrt.runtime.session import Frame, Session


class TinySession(Session):
    def _reset_memory(self) -> None:
        self._key = self._value = self._valid = None  # [1, Ck, T], [1, K, Cv, T], [1, T]
        self._stored = 0  # memory frames written so far

    @property
    def _has_memory(self) -> bool:
        return self._stored > 0

    def _memory_tokens(self, frame_tokens: int) -> int:
        return self.config.max_mem_frames * frame_tokens

    @classmethod
    def _encode(cls, steps: Sequence[tuple["TinySession", Frame]], batcher: StageBatcher) -> list[dict]:
        return batcher.run("image_encoder", [(s, {"image": frame.image}) for s, frame in steps])

    @classmethod
    def _predict(cls, streams, batcher: StageBatcher) -> list[torch.Tensor]:
        readouts = batcher.run("memory_readout", [
            (s, dict(key=encoded["key"], memory_key=s._key, memory_value=s._value, memory_valid=s._valid))
            for s, _, encoded in streams])
        decoded = batcher.run("decoder", [(s, dict(features=encoded["features"], readout=outputs["readout"]))
                                          for (s, _, encoded), outputs in zip(streams, readouts)])
        return [outputs["prob"][0] for outputs in decoded]

    def _register_objects(self, new_objects: list[int]) -> None:
        if new_objects and self._value is not None:
            new = self._new_state("memory_readout", "memory_value", len(new_objects), self.config.max_mem_frames)
            self._value = torch.cat([self._value, new], dim=1)

    @classmethod
    def _memorise(cls, streams, batcher: StageBatcher) -> None:
        encoded = batcher.run("mask_encoder", [(s, dict(image=frame.image, masks=s._last_masks[None]))
                                               for s, frame, _ in streams])
        for (s, _, features), outputs in zip(streams, encoded):
            s._write(features["key"].flatten(2), outputs["value"].flatten(3))

    def _write(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """One memory frame (key ``[1, Ck, hw]``, values ``[1, K, Cv, hw]``) into the next slot of the ring."""
        frames, hw = self.config.max_mem_frames, key.shape[-1]
        if self._key is None:
            objects = value.shape[1]
            self._key = self._new_state("memory_readout", "memory_key", objects, frames)
            self._value = self._new_state("memory_readout", "memory_value", objects, frames)
            self._valid = self._new_state("memory_readout", "memory_valid", objects, frames).bool()
        tokens = slice(self._stored % frames * hw, (self._stored % frames + 1) * hw)
        self._key[:, :, tokens], self._value[:, :, :, tokens], self._valid[:, tokens] = key, value, True
        self._stored += 1

    def _keep_rows(self, rows: list[int], removed: list[int]) -> None:
        if self._value is not None:
            self._value = self._value[:, rows]
