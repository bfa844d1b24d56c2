"""The one exception type for bad input: it becomes a row in the rejects table, never a crash."""
from __future__ import annotations


class RejectError(Exception):
    """A specific, recorded reason why one input cannot be used.

    stage:  where it was found (ingest, align, openface, landmarks, expand, ganimation, singan, write, quality)
    reason: a short stable code people can group by, e.g. "no_face", "corrupt_image"
    detail: the human-readable specifics (file, value, what was expected)
    """

    def __init__(self, stage: str, reason: str, detail: str):
        super().__init__(f"[{stage}/{reason}] {detail}")
        self.stage = stage
        self.reason = reason
        self.detail = detail

    def as_row(self, source_id: str) -> dict[str, str]:
        return {"source_id": source_id, "stage": self.stage, "reason": self.reason, "detail": self.detail}
