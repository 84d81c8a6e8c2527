"""Cutie's inference settings (official ``eval_config.yaml`` defaults). No torch import."""
from __future__ import annotations

from dataclasses import dataclass

from vosrt.runtime.config import SessionConfig, option


@dataclass(frozen=True)
class LongTermPolicy:
    """The official ``long_term`` settings as the memory store applies them.

    keep_frames: working-memory frames left after a consolidation besides the permanent one
    (``min_mem_frames - 1``); num_prototypes: prototypes made per consolidation;
    max_tokens: long-term capacity in tokens (``max_num_tokens``); buffer_tokens: room freed
    beyond the next prototypes when the long-term memory is full; count_usage: whether the
    readout counts the usage of long-term tokens (without it eviction keeps the newest tokens,
    where the official code fails).
    """

    keep_frames: int
    num_prototypes: int
    max_tokens: int
    buffer_tokens: int
    count_usage: bool

    @property
    def evict_at(self) -> int:
        """Long-term size from which the next consolidation first evicts."""
        return self.max_tokens - self.num_prototypes

    @property
    def keep_after_eviction(self) -> int:
        return self.max_tokens - self.num_prototypes - self.buffer_tokens


@dataclass(frozen=True)
class CutieSessionConfig(SessionConfig):
    """Cutie's settings. ``max_mem_frames`` sizes the working memory without long-term memory;
    with ``use_long_term`` the ``long_term_*`` fields are the official ``long_term`` section."""

    stagger_updates: int = option(5, "sensory updates between two memory frames")
    chunk_size: int = option(-1, "objects read from memory together (-1: all)")
    use_long_term: bool = option(False, "long-term memory (official 'generic' setting) for long videos; bounded memory")
    long_term_max_mem_frames: int = option(10, "working memory frames with long-term memory")
    long_term_min_mem_frames: int = option(5, "working memory frames kept after a consolidation")
    long_term_num_prototypes: int = option(128, "long-term prototypes per consolidation")
    long_term_max_num_tokens: int = option(10000, "long-term memory size in tokens")
    long_term_buffer_tokens: int = option(2000, "long-term tokens freed beyond the next prototypes when full")
    long_term_count_usage: bool = option(True, "do not count the usage of long-term tokens (eviction then keeps the "
                                               "newest)", flag="--no-long-term-usage")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("stagger_updates", "long_term_min_mem_frames", "long_term_num_prototypes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.long_term_min_mem_frames >= self.long_term_max_mem_frames:
            raise ValueError(f"long_term_min_mem_frames ({self.long_term_min_mem_frames}) must be smaller than "
                             f"long_term_max_mem_frames ({self.long_term_max_mem_frames})")
        if self.long_term_buffer_tokens < 0 or \
                self.long_term_num_prototypes + self.long_term_buffer_tokens > self.long_term_max_num_tokens:
            raise ValueError("long_term_max_num_tokens must hold long_term_num_prototypes + long_term_buffer_tokens "
                             f"(buffer >= 0), got {self.long_term_max_num_tokens} < {self.long_term_num_prototypes} "
                             f"+ {self.long_term_buffer_tokens}")

    @property
    def memory_frames(self) -> int:
        """Working-memory frames per bucket, the permanent first frame included."""
        return self.long_term_max_mem_frames if self.use_long_term else self.max_mem_frames

    def long_term_policy(self) -> LongTermPolicy | None:
        """The long-term memory rules, or None without ``use_long_term``."""
        if not self.use_long_term:
            return None
        return LongTermPolicy(keep_frames=self.long_term_min_mem_frames - 1,
                              num_prototypes=self.long_term_num_prototypes,
                              max_tokens=self.long_term_max_num_tokens, buffer_tokens=self.long_term_buffer_tokens,
                              count_usage=self.long_term_count_usage)

    def stagger_steps(self) -> set[int]:
        """Frame distances from the last memory frame at which the sensory memory is updated
        (the official ``np.round(np.linspace(1, mem_every, stagger_updates))``)."""
        if self.stagger_updates >= self.mem_every:
            return set(range(1, self.mem_every + 1))
        if self.stagger_updates == 1:
            return {1}
        step = (self.mem_every - 1) / (self.stagger_updates - 1)
        return {round(1 + i * step) for i in range(self.stagger_updates)}

    def check_engine_memory(self, engine_max_mem_frames: int, directory, static: bool = False) -> None:
        if self.use_long_term:
            raise ValueError("backend='tensorrt' engines are built for the working memory only; "
                             "use_long_term needs backend='torch' or 'onnxruntime' in this version")
        super().check_engine_memory(engine_max_mem_frames, directory, static)

    def export_settings(self) -> dict:
        return {"top_k": self.top_k}
