"""Who does what: rank -> (replica, stage), process groups, and modules assigned to stages by cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contsup.errors import ContsupError

STAGES_PER_RANK = {"gpipe": 1, "1f1b": 1, "interleaved": 2, "zbv": 2}  # torch's schedules (docs/parallel.md)


def stage_owners(parallel: str, ranks: int) -> list[int]:
    """The rank holding each stage: one a rank, looped (interleaved: s mod P) or V-shaped (zbv: 0..P-1, P-1..0)."""
    if parallel == "zbv":
        return [*range(ranks), *reversed(range(ranks))]
    return [s % ranks for s in range(STAGES_PER_RANK[parallel] * ranks)]


@dataclass(frozen=True)
class Topology:
    """R replicas of a P-stage pipeline; rank = replica * P + stage."""

    world: int
    stages: int
    replicas: int
    rank: int

    @classmethod
    def build(cls, world: int, replicas: int, rank: int) -> Topology:
        """Split `world` ranks into `replicas` pipelines; fail clearly when it does not divide."""
        if replicas < 1 or world % replicas:
            raise ContsupError(f"--replicas {replicas} does not divide the {world} ranks")
        return cls(world, world // replicas, replicas, rank)

    @property
    def stage(self) -> int:
        """This rank's pipeline stage (0 reads the data)."""
        return self.rank % self.stages

    @property
    def replica(self) -> int:
        """This rank's replica (which slice of every batch it works on)."""
        return self.rank // self.stages

    @property
    def first(self) -> bool:
        """Whether this rank reads the data."""
        return self.stage == 0

    @property
    def last(self) -> bool:
        """Whether this rank holds the classifier."""
        return self.stage == self.stages - 1

    @property
    def prev_rank(self) -> int | None:
        """The rank this one receives activations from (None on the first stage)."""
        return None if self.first else self.rank - 1

    @property
    def next_rank(self) -> int | None:
        """The rank this one sends activations to (None on the last stage)."""
        return None if self.last else self.rank + 1

    def stage_ranks(self, stage: int) -> list[int]:
        """The ranks holding `stage` in every replica: they all-reduce gradients and BN statistics."""
        return [r * self.stages + stage for r in range(self.replicas)]


def partition(costs: Sequence[float], parts: int) -> list[range]:
    """Contiguous split of modules into `parts` non-empty groups minimising the largest group cost."""
    k = len(costs)
    if not 1 <= parts <= k:
        raise ContsupError(f"cannot split K={k} modules into {parts} pipeline stages: need 1 <= stages <= K")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[p][i]: smallest possible largest cost splitting the first i modules into p groups.
    best = [[inf] * (k + 1) for _ in range(parts + 1)]
    cut = [[0] * (k + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for p in range(1, parts + 1):
        for i in range(p, k + 1):
            for j in range(p - 1, i):
                value = max(best[p - 1][j], prefix[i] - prefix[j])
                if value < best[p][i]:
                    best[p][i], cut[p][i] = value, j
    bounds = [k]
    for p in range(parts, 0, -1):
        bounds.append(cut[p][bounds[-1]])
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def from_sizes(sizes: Sequence[int], modules: int, parts: int) -> list[range]:
    """Stage assignment from explicit module counts per stage (`--stage-sizes 3,5,8`)."""
    if len(sizes) != parts or any(s < 1 for s in sizes) or sum(sizes) != modules:
        raise ContsupError(
            f"--stage-sizes {','.join(map(str, sizes))}: need {parts} positive counts summing to K={modules}"
        )
    out, start = [], 0
    for s in sizes:
        out.append(range(start, start + s))
        start += s
    return out
