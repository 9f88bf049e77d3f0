"""The models a stack serves: read from MODELS_FILE (several) or MODEL_PATH (one), with versions.

A model's version is the sha256 of its file (first 12 hex digits): what ran a job is stored with it.
The API needs only each model's signature (read without the weights); a worker loads one model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobqueue.model_signature import ModelSignature, batch_mismatch, read_signature
from jobqueue.settings import MODEL_NAME_PATTERN, Settings

MODEL_FIELDS = {"path", "labels", "max_batch_size", "max_batch_wait_ms", "inference_providers", "inference_threads"}
VERSION_HEX_DIGITS = 12


class ModelConfigError(ValueError):
    """MODELS_FILE or the model settings are wrong; the message names the model and field."""


@dataclass(frozen=True)
class ModelConfig:
    """One served model and its per-model overrides of the global batch and runtime settings."""

    name: str
    path: str
    labels_path: str = ""
    max_batch_size: int = 128
    max_batch_wait_ms: float = 0
    inference_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    inference_threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def name_from_path(path: str) -> str:
    """A model name from a file name: models/Iris_v2.onnx -> iris-v2."""
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(path).stem.lower()).strip("-")[:40].strip("-")
    return stem or "model"


def file_version(path: str | Path) -> str:
    """sha256 of the file, short form; streamed so a large model is never held in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:VERSION_HEX_DIGITS]


def _providers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(p.strip() for p in value if p and p.strip())


def read_model(config: ModelConfig) -> tuple[ModelSignature, str]:
    """A model's signature (never its weights) and version; ValueError when its declared outputs
    cannot be told apart per job. The API and the workers accept or refuse a model alike."""
    signature = read_signature(config.path, config.labels_path)
    why = batch_mismatch(signature)
    if why:
        raise ValueError(f"model {config.name}: {why}; results could not be told apart per job")
    return signature, file_version(config.path)


def load_models(settings: Settings) -> dict[str, ModelConfig]:
    """Every configured model by name, the default first. Raises ModelConfigError with a clear message."""
    defaults: dict[str, Any] = {
        "max_batch_size": settings.max_batch_size,
        "max_batch_wait_ms": settings.max_batch_wait_ms,
        "inference_providers": _providers(settings.inference_providers),
        "inference_threads": settings.inference_threads,
    }
    if not settings.models_file:
        name = name_from_path(settings.model_path)
        return {name: ModelConfig(name=name, path=settings.model_path, labels_path=settings.labels_path, **defaults)}
    import yaml  # only a stack with several models pays for it

    try:
        raw = yaml.safe_load(Path(settings.models_file).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"MODELS_FILE {settings.models_file}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ModelConfigError(f"MODELS_FILE {settings.models_file}: expected a mapping of model name to settings")
    models: dict[str, ModelConfig] = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not re.match(MODEL_NAME_PATTERN, name):
            raise ModelConfigError(f"MODELS_FILE: {name!r} is not a valid model name (lower-case letters, digits, '-')")
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            raise ModelConfigError(f"MODELS_FILE: model {name!r} needs a `path`")
        unknown = set(spec) - MODEL_FIELDS
        if unknown:
            raise ModelConfigError(
                f"MODELS_FILE: model {name!r} has unknown fields {sorted(unknown)}; known: {sorted(MODEL_FIELDS)}"
            )
        path = Path(spec["path"])
        if not path.is_absolute():
            path = Path(settings.models_file).parent / path if not path.exists() else path
        overrides = {key: spec[key] for key in defaults if key in spec}
        if "inference_providers" in overrides:
            overrides["inference_providers"] = _providers(overrides["inference_providers"])
        try:
            batch = int(overrides.get("max_batch_size", defaults["max_batch_size"]))
            wait = float(overrides.get("max_batch_wait_ms", defaults["max_batch_wait_ms"]))
            threads = int(overrides.get("inference_threads", defaults["inference_threads"]))
        except (TypeError, ValueError) as exc:
            raise ModelConfigError(f"MODELS_FILE: model {name!r}: {exc}") from None
        if not 1 <= batch <= 4096 or wait < 0 or threads < 0:
            raise ModelConfigError(
                f"MODELS_FILE: model {name!r}: max_batch_size 1..4096, max_batch_wait_ms >= 0, inference_threads >= 0"
            )
        models[name] = ModelConfig(
            name=name,
            path=str(path),
            labels_path=str(spec.get("labels") or ""),
            max_batch_size=batch,
            max_batch_wait_ms=wait,
            inference_providers=overrides.get("inference_providers", defaults["inference_providers"]),
            inference_threads=threads,
        )
    default = settings.default_model or next(iter(models))
    if default not in models:
        raise ModelConfigError(f"DEFAULT_MODEL {default!r} is not in MODELS_FILE (known: {', '.join(models)})")
    return {default: models[default], **{n: m for n, m in models.items() if n != default}}
