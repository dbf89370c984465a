"""Which code made the runs behind a table: the git commit(s) their metrics.json record, dirty or mixed."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from normrepro.errors import ConfigError
from normrepro.report.runs import Run

DIRTY_SUFFIX = "-dirty"


@dataclass(frozen=True)
class CodeStamp:
    """The commits of a set of runs with their run counts; flags for several commits, a dirty or an unknown tree."""
    commits: tuple[tuple[str, int], ...]   # (commit as recorded, number of runs), sorted by commit

    @property
    def shas(self) -> list[str]:
        """The distinct commits without the -dirty suffix."""
        return sorted({c.removesuffix(DIRTY_SUFFIX) for c, _ in self.commits})

    @property
    def mixed(self) -> bool:
        """The runs come from more than one commit."""
        return len(self.shas) > 1

    @property
    def dirty(self) -> bool:
        """Some run was made from a tree with uncommitted changes."""
        return any(c.endswith(DIRTY_SUFFIX) for c, _ in self.commits)

    @property
    def unknown(self) -> bool:
        """Some run recorded no commit (outside a git checkout, or an old metrics.json)."""
        return any(c == "unknown" for c, _ in self.commits)

    @property
    def clean(self) -> bool:
        """One commit, no dirty tree, nothing unknown: the table can be regenerated from that commit."""
        return bool(self.commits) and not (self.mixed or self.dirty or self.unknown)

    def line(self) -> str:
        """The table's "Code:" line (a marked one when the stamp is not clean)."""
        if not self.commits:
            return "Code: git commit not recorded"
        listed = ", ".join(f"{c} ({n} run{'s' if n != 1 else ''})" for c, n in self.commits)
        if self.clean:
            return f"Code: git {self.commits[0][0]} (all {self.commits[0][1]} runs)"
        marks = [m for m, on in (("MIXED COMMITS", self.mixed), ("DIRTY TREE", self.dirty),
                                 ("UNKNOWN COMMIT", self.unknown)) if on]
        return (f"**Code: {' + '.join(marks)}: git {listed}. These numbers cannot be regenerated from one clean "
                "commit.**")


def code_stamp(runs: Iterable[Run]) -> CodeStamp:
    """The :class:`CodeStamp` of the runs that wrote metrics (a run without a commit counts as "unknown")."""
    counts = Counter(str(r.git_commit or "unknown") for r in runs if r.metrics)
    return CodeStamp(tuple(sorted(counts.items())))


def check_stamp(stamp: CodeStamp, allow_mixed: bool = False) -> None:
    """ConfigError when the runs come from several commits, unless ``allow_mixed`` (the table is then marked)."""
    if stamp.mixed and not allow_mixed:
        listed = ", ".join(f"{c} ({n} runs)" for c, n in stamp.commits)
        raise ConfigError(f"the runs come from {len(stamp.shas)} git commits ({listed}); re-run them at one "
                          "commit, or pass --allow-mixed to write a table marked MIXED COMMITS")
