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

from pydantic import ConfigDict, ValidationError, create_model

from jobqueue.model_signature import ModelSignature, batch_mismatch, read_signature
from jobqueue.settings import MODEL_NAME_PATTERN, Settings
from jobqueue.shards import TAG_PATTERN

# A MODELS_FILE entry's overrides -> the Settings field each one overrides: its type and bounds are
# that field's own, so a value the environment variable would refuse is refused here too.
OVERRIDES = {
    "labels": "labels_path",
    "max_batch_size": "max_batch_size",
    "max_batch_wait_ms": "max_batch_wait_ms",
    "inference_providers": "inference_providers",
    "inference_threads": "inference_threads",
    "shards": "queue_shards",
}
MODEL_FIELDS = {"path", "tags", *OVERRIDES}
VERSION_HEX_DIGITS = 12

ModelOverrides = create_model(
    "ModelOverrides",
    __config__=ConfigDict(extra="forbid"),
    **{key: (Settings.model_fields[name].annotation, Settings.model_fields[name]) for key, name in OVERRIDES.items()},  # type: ignore[call-overload]
)


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
    shards: int = 1  # queue shards on a Redis Cluster (jobqueue/shards.py)
    tags: tuple[str, ...] = ()  # the shards' hash tags as configured; () = chosen from the slot map
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


def _overrides(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """A model's overrides checked against the Settings fields they override; ModelConfigError naming
    the model and the field (a NaN wait or a fractional batch size would stop its worker mid-job)."""
    if isinstance(given.get("inference_providers"), list):  # a YAML list, or the variable's comma-separated text
        given["inference_providers"] = ",".join(str(provider) for provider in given["inference_providers"])
    try:
        checked = ModelOverrides.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise ModelConfigError(f"MODELS_FILE: model {name!r}: {field}: {error['msg']} (got {error['input']!r})") from None
    return {key: getattr(checked, key) for key in checked.model_fields_set}


def _tags(name: str, given: Any, shards: int | None, settings: Settings) -> tuple[str, ...]:
    """A model's `tags:` (its shards' hash tags, given rather than chosen: KEDA triggers name their keys),
    checked; () when not given."""
    if given is None:
        return ()
    if not settings.redis_cluster:
        raise ModelConfigError(f"MODELS_FILE: model {name!r}: tags need REDIS_CLUSTER")
    if not isinstance(given, list) or not given or not all(isinstance(t, str) and TAG_PATTERN.match(t) for t in given):
        raise ModelConfigError(
            f"MODELS_FILE: model {name!r}: tags: a list of 1-8 lower-case letters or digits each (got {given!r})"
        )
    if len(set(given)) != len(given):
        raise ModelConfigError(f"MODELS_FILE: model {name!r}: tags: each shard needs its own tag (got {given!r})")
    if shards is not None and shards != len(given):
        raise ModelConfigError(f"MODELS_FILE: model {name!r}: shards ({shards}) differs from the number of tags ({len(given)})")
    return tuple(given)


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
        "shards": settings.queue_shards,
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
        overrides = _overrides(name, {key: value for key, value in spec.items() if key not in ("path", "tags")})
        tags = _tags(name, spec.get("tags"), overrides.get("shards"), settings)
        models[name] = ModelConfig(
            name=name,
            path=str(path),
            labels_path=overrides.get("labels", ""),
            max_batch_size=overrides.get("max_batch_size", defaults["max_batch_size"]),
            max_batch_wait_ms=overrides.get("max_batch_wait_ms", defaults["max_batch_wait_ms"]),
            inference_providers=_providers(overrides.get("inference_providers", defaults["inference_providers"])),
            inference_threads=overrides.get("inference_threads", defaults["inference_threads"]),
            shards=len(tags) if tags else overrides.get("shards", defaults["shards"]),
            tags=tags,
        )
        if models[name].shards > 1 and not settings.redis_cluster:
            raise ModelConfigError(
                f"MODELS_FILE: model {name!r}: shards > 1 needs REDIS_CLUSTER (a Cluster's masters to spread over)"
            )
    default = settings.default_model or next(iter(models))
    if default not in models:
        raise ModelConfigError(f"DEFAULT_MODEL {default!r} is not in MODELS_FILE (known: {', '.join(models)})")
    return {default: models[default], **{n: m for n, m in models.items() if n != default}}
