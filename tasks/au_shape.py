"""AU shape models on disk: the FACS default, or a fitted model JSON (singanimation fit-au-shape)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from models.au_shape import AUShapeModel, default_au_shape_model


def load_au_shape(path: str | os.PathLike | None) -> AUShapeModel:
    """The model at `path` (fit-au-shape output, or any AUShapeModel.to_json), or the FACS-authored default when
    path is None. FileNotFoundError when absent; ValueError naming the file when it is not a readable model."""
    if path is None:
        return default_au_shape_model()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such AU shape model file (write one with `singanimation fit-au-shape`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not an AU shape model (not JSON: {err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not an AU shape model (JSON {type(data).__name__}, expected an object)")
    try:
        return AUShapeModel.from_json(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
