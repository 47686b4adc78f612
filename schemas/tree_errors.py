"""Errors of the tree-model modes (bagging, cyclic, collective) on the service side.

Every error names the silo and round at fault where known, and says what to do.

    TreeError
    ├── TreeUpdateError             a silo's submitted tree update is refused
    │   ├── TreeModelFormatError    the envelope or the native model does not parse
    │   ├── FeatureCountError       the trees use a different number of features
    │   ├── WrongRoundError         the update is for another run or round
    │   ├── StaleModelError         the trees were grown from another global model version
    │   └── TreeCountError          more or fewer new trees than the run asked for
    ├── MergeError                  updates cannot be merged (objective, base score differ)
    ├── UnsupportedTreeError        a valid model uses a feature fedsilo does not evaluate
    │                               (categorical splits, linear trees, multi-class)
    └── CollectiveError             XGBoost's federated collective cannot start or join
        ├── CollectiveTLSError      TLS material missing or rejected (mutual TLS is mandatory)
        └── CollectiveRunError      the server or a worker failed or timed out
"""

from __future__ import annotations


class TreeError(Exception):
    """Base class for tree-mode failures.

    Parameters
    ----------
    message
        What went wrong and how to fix it.
    silo, round_num
        Where it went wrong; either may be unknown (None).
    """

    def __init__(
        self, message: str, *, silo: str | None = None, round_num: int | None = None
    ) -> None:
        self.silo = silo
        self.round_num = round_num
        where = []
        if silo is not None:
            where.append(f"silo {silo}")
        if round_num is not None:
            where.append(f"round {round_num}")
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(prefix + message)
        self.detail = message


class TreeUpdateError(TreeError):
    """A silo's tree update is refused; the round goes on without it."""


class TreeModelFormatError(TreeUpdateError):
    """The envelope or the native model bytes do not parse as the declared library's format."""


class FeatureCountError(TreeUpdateError):
    """The trees were trained on, or split on, a different number of features."""


class WrongRoundError(TreeUpdateError):
    """The update is bound to another run or round (late, replayed or misrouted)."""


class StaleModelError(TreeUpdateError):
    """The trees were grown from a global model other than the current one."""


class TreeCountError(TreeUpdateError):
    """The update holds a different number of new trees than the run asked for."""


class MergeError(TreeError):
    """Accepted updates disagree on something a merge needs to be the same (objective, base)."""


class UnsupportedTreeError(TreeError):
    """A model uses categorical splits, linear leaves or several outputs per iteration."""


class CollectiveError(TreeError):
    """XGBoost's federated collective could not be started or joined."""


class CollectiveTLSError(CollectiveError):
    """Mutual-TLS material is missing, unreadable, or was rejected by the peer."""


class CollectiveRunError(CollectiveError):
    """The collective server or a worker failed or did not finish in time."""
