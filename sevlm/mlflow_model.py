"""The MLflow pyfunc model, defined by code: MLflow runs this file to build it.

Input: a DataFrame with an ``image`` column of base64-encoded image bytes (or raw bytes).
Never file paths: a served model must not read files on the server.
Output: one row per image with ``emotion``, ``explanation``, ``valence``, ``arousal``,
``dominance`` (NaN when the explanation has no lexicon word).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from PIL import Image


def encode_image(path: Path | str) -> str:
    """An image file as the base64 text the model takes."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def example_input() -> pd.DataFrame:
    """A one-image input example: a small grey picture."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]})


def _read(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else base64.b64decode(value, validate=True)


class SEVLMModel(PythonModel):
    def load_context(self, context) -> None:
        from sevlm.examples import ExampleConfig
        from sevlm.generate import Decoder
        from sevlm.weights import load_pretrained

        loaded = load_pretrained(context.artifacts["model"])
        self.decoder = Decoder(loaded.model, loaded.tokenizer, loaded.lexicon)
        self.transform = ExampleConfig.for_model(loaded.model.config).transform

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import torch

        from sevlm.images import load_rgb

        pixels = torch.stack(
            [torch.as_tensor(self.transform(load_rgb(_read(v)))) for v in model_input["image"]]
        )
        rows = []
        for said in self.decoder.explain(pixels):
            v, a, d = said.vad if said.vad is not None else (float("nan"),) * 3
            rows.append(
                {"emotion": said.emotion, "explanation": said.explanation,
                 "valence": v, "arousal": a, "dominance": d}
            )  # fmt: skip
        return pd.DataFrame(rows)


set_model(SEVLMModel())
