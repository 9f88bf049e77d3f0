"""Typed settings read once from the environment; the one place every variable is named and defaulted."""

from functools import lru_cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the API, the worker, the local stack, the containers and the chart.

    Field names map 1:1 to upper-case environment variables (``queue_name`` -> ``QUEUE_NAME``).
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Kept apart from the URL so Kubernetes can inject it from a Secret.
    redis_password: str = ""
    queue_name: str = Field("asyncinfer:queue", min_length=1)
    model_path: str = "models/iris.onnx"
    labels_path: str = ""
    inference_threads: int = Field(0, ge=0)  # ONNX Runtime intra-op threads; 0 = its own default

    job_ttl_seconds: int = Field(3600, ge=1)
    request_ttl_seconds: int = Field(1800, ge=0)  # 0 = a pending job never expires
    max_batch_size: int = Field(128, ge=1, le=4096)
    max_batch_wait_ms: float = Field(5, ge=0)
    max_attempts: int = Field(3, ge=1)
    job_timeout_seconds: float = Field(60, gt=0)
    worker_ttl_seconds: float = Field(10, gt=0)
    recovery_interval_seconds: float = Field(5, gt=0)
    drain_timeout_seconds: float = Field(25, ge=0)
    shutdown_delay_seconds: float = Field(0, ge=0)

    max_queue_length: int = Field(100_000, ge=0)  # 0 = unbounded
    max_body_bytes: int = Field(1_048_576, ge=64)
    max_rows_per_job: int = Field(256, ge=1)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    worker_health_port: int = Field(0, ge=0, le=65535)  # 0 = no worker health server
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _request_ttl_within_record_life(self) -> "Settings":
        # A pending job's record must outlive its start deadline, or it vanishes instead of expiring.
        if self.request_ttl_seconds > self.job_ttl_seconds:
            raise ValueError("REQUEST_TTL_SECONDS must not exceed JOB_TTL_SECONDS")
        return self

    @property
    def heartbeat_interval_seconds(self) -> float:
        """A third of the TTL, so two heartbeats can be missed before a worker counts as dead."""
        return self.worker_ttl_seconds / 3


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
