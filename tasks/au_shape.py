"""AU shape models on disk: the FACS default, or a fitted model JSON (singanimation fit-au-shape)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from models.au_shape import AUShapeModel, default_au_shape_model


def load_au_shape(path: str | os.PathLike | None) -> AUShapeModel:
    """The model at `path` (JSON written by fit-au-shape), or the FACS-authored default when path is None."""
    if path is None:
        return default_au_shape_model()
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"AU shape model {path} does not exist (write one with `singanimation fit-au-shape`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"AU shape model {path} is not JSON: {err}") from None
    try:
        return AUShapeModel.from_json(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"AU shape model {path}: {err}") from None
