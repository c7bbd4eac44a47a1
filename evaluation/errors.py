"""Errors raised by the evaluation layer for user-fixable problems (bad clips, codecs, curves)."""
from vitok.data.errors import VitokError


class EvaluationError(VitokError):
    """An evaluation could not run or a result is undefined: unknown codec, no clips, too few RD points."""
