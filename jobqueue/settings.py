"""Typed settings read once from the environment: the one place every variable is named, defaulted,
bounded and described. The README table, the chart's values/schema/ConfigMap and the compose file are
generated from this class or checked against it by tests."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A model name appears in Redis keys, metric labels and Kubernetes object names: a DNS label.
MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
PRIORITIES = ("high", "normal", "low")


class Settings(BaseModel):
    """Every knob of the API, the worker, the notifier, the local stack, the containers and the chart.

    Field names map 1:1 to upper-case environment variables (``key_prefix`` -> ``KEY_PREFIX``); values
    given as arguments win over the environment. (A plain pydantic model reading os.environ: the
    pydantic-settings package alone cost a worker a quarter of its cold start.)
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    def __init__(self, **values: Any) -> None:
        from_env = {name: os.environ[name.upper()] for name in type(self).model_fields if name.upper() in os.environ}
        super().__init__(**{**from_env, **values})

    # -- Redis ---------------------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis to store jobs in (redis:// or rediss://).")
    redis_password: str = Field("", description="Redis password; prefer REDIS_PASSWORD_FILE.")
    redis_password_file: str = Field(
        "", description="File holding the Redis password (a mounted Secret); wins over REDIS_PASSWORD."
    )
    redis_deadline_seconds: float = Field(
        5,
        ge=0.1,
        le=300,
        description=(
            "API and notifier: longest wait for Redis per call (connect, handshake, command and retries "
            "together); past it the API answers 503."
        ),
    )
    redis_sentinels: str = Field(
        "",
        description=(
            "Comma-separated host:port of Redis Sentinels; set, every process finds the primary through them "
            "(REDIS_URL still gives the db, credentials and TLS)."
        ),
    )
    redis_sentinel_master: str = Field("mymaster", min_length=1, description="The Sentinel master set's name.")
    redis_sentinel_password_file: str = Field("", description="File holding the Sentinels' password (a mounted Secret).")
    redis_cluster: bool = Field(
        False,
        description=(
            "REDIS_URL names one node (a seed) of a Redis Cluster: each model's keys carry a hash tag placed on a "
            "master by the slot map, and every process routes to the node that serves it."
        ),
    )
    queue_shards: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "With REDIS_CLUSTER: how many shards (hash tags, spread over the masters) each model's queue is split "
            "into; a model's `shards:` in MODELS_FILE overrides it. Standalone Redis: 1."
        ),
    )
    redis_min_replicas_ack: int = Field(
        0,
        ge=0,
        le=16,
        description=(
            "Replicas that must hold a submit, retry or cancel before it is acknowledged, and a job's end before "
            "it is shown (Redis WAIT); fewer within REDIS_REPLICA_ACK_TIMEOUT_MS: 503. 0 = the primary's word is enough."
        ),
    )
    redis_replica_ack_timeout_ms: int = Field(
        500,
        ge=1,
        le=60_000,
        description=(
            "How long to wait for REDIS_MIN_REPLICAS_ACK replicas; past it the API answers 503. Below REDIS_DEADLINE_SECONDS."
        ),
    )
    key_prefix: str = Field(
        "asyncinfer",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.{}-]+$",
        description="Prefix of every Redis key; pending lists are `<prefix>:<model>:pending:<priority>`.",
    )

    # -- models ----------------------------------------------------------------------------------
    model_path: str = Field(
        "models/iris.onnx", description="The ONNX file of a one-model setup (ignored when MODELS_FILE is set)."
    )
    labels_path: str = Field("", description="Optional class names for MODEL_PATH (JSON list or one per line).")
    models_file: str = Field(
        "", description="YAML file mapping model name to {path, labels, max_batch_size, ...}; several models."
    )
    default_model: str = Field("", description="Model served by /predict and /metadata; default: the first in MODELS_FILE.")
    model_name: str = Field("", description="Worker: the model this process serves; default: the default model.")
    inference_threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0 = its own default.")
    inference_providers: str = Field(
        "CPUExecutionProvider",
        description="ONNX Runtime execution providers in order, comma-separated; missing ones are skipped.",
    )

    # -- jobs ------------------------------------------------------------------------------------
    job_ttl_seconds: int = Field(3600, ge=1, description="How long a finished job's record (and result) is kept.")
    request_ttl_seconds: int = Field(1800, ge=0, description="A job not started within this ends expired; 0 = never.")
    max_batch_size: int = Field(128, ge=1, le=4096, description="Most jobs one model call takes.")
    max_batch_wait_ms: float = Field(
        0,
        ge=0,
        le=10_000,
        description=(
            "How long a worker waits to fill a batch once it holds a job; 0 runs what it has at once "
            "(under load, jobs queue while the model runs, so batches fill anyway). A GPU model may want a few ms."
        ),
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Runs of one job before it fails for good.")
    job_timeout_seconds: float = Field(
        60, gt=0, le=86_400, description="Longest model call for one job; longer is aborted and fails."
    )
    worker_ttl_seconds: float = Field(10, gt=0, le=3600, description="A worker silent this long is dead; its jobs are requeued.")
    recovery_interval_seconds: float = Field(5, gt=0, le=3600, description="How often some worker looks for dead workers' jobs.")
    drain_timeout_seconds: float = Field(
        70,
        ge=0,
        le=3600,
        description="On SIGTERM, time to finish held jobs before handing them back; above JOB_TIMEOUT_SECONDS, so a scale-in lets a batch finish.",
    )
    keep_alive_timeout_seconds: int = Field(
        75,
        ge=1,
        le=3600,
        description=(
            "API: how long an idle client connection stays open; above the proxy's pool timeout "
            "(ingress-nginx 60 s, AWS ALB 60 s; GCP load balancers need 620), or a reused connection is "
            "closed under a request (a 502)."
        ),
    )
    shutdown_delay_seconds: float = Field(
        0, ge=0, le=300, description="API: serve unready this long after SIGTERM before closing."
    )

    max_queue_length: int = Field(
        100_000, ge=0, description="Most pending jobs per model; more is refused with 429; 0 = unbounded."
    )
    max_body_bytes: int = Field(1_048_576, ge=64, description="Largest request body.")
    max_rows_per_job: int = Field(256, ge=1, description="Most input rows in one job.")
    max_bulk_items: int = Field(1000, ge=1, le=100_000, description="Most items in one bulk submit or lookup.")
    max_dead_letters: int = Field(10_000, ge=1, description="Dead-letter list length kept per model (oldest dropped).")

    # -- security and limits ---------------------------------------------------------------------
    auth_tokens_file: str = Field("", description="File of '<name> <role> <token>' lines (role client|admin); unset = no auth.")
    docs_enabled: bool = Field(True, description="Serve /docs and /openapi.json.")
    rate_limit_per_second: float = Field(0, ge=0, description="Submits per second per principal (token bucket); 0 = unlimited.")
    rate_limit_burst: int = Field(200, ge=1, description="Token bucket size for RATE_LIMIT_PER_SECOND.")
    max_pending_per_principal: int = Field(0, ge=0, description="Unfinished jobs one principal may have; 0 = unlimited.")
    max_concurrent_requests: int = Field(512, ge=1, description="Requests one API process serves at once; more get 503.")
    ws_max_message_bytes: int = Field(
        131_072, ge=1024, le=16_777_216, description="Largest WebSocket message (a list of job ids); larger closes with 1009."
    )
    ws_max_sockets_per_principal: int = Field(
        64, ge=1, description="WebSockets one principal may hold open on one API process; more close with 1008."
    )
    ws_max_watched_per_principal: int = Field(
        10_000, ge=1, description="Job ids one principal may watch across all its WebSockets on one API process (1008 past it)."
    )

    # -- webhooks --------------------------------------------------------------------------------
    webhook_secret: str = Field("", description="Standard Webhooks signing secret (whsec_...); prefer WEBHOOK_SECRET_FILE.")
    webhook_secret_file: str = Field("", description="File holding WEBHOOK_SECRET (a mounted Secret).")
    webhook_allow_http: bool = Field(False, description="Allow http:// callback URLs (https only otherwise).")
    webhook_allow_private: bool = Field(False, description="Allow callbacks to loopback, private and link-local addresses.")
    webhook_allowed_hosts: str = Field("", description="Comma-separated host names callbacks may go to; empty = any public host.")
    webhook_timeout_seconds: float = Field(5, gt=0, le=60, description="Timeout of one webhook delivery.")
    webhook_max_attempts: int = Field(8, ge=1, le=30, description="Deliveries tried before a webhook is given up.")

    # -- Open Inference Protocol -----------------------------------------------------------------
    oip_wait_seconds: float = Field(
        30, ge=0, le=300, description="How long /v2/models/{name}/infer waits for the job before a 202."
    )

    # -- object storage (large inputs and results) ------------------------------------------------
    object_store_url: str = Field(
        "",
        pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?)?$",
        description=(
            "s3://bucket/prefix for large inputs (`input_url`, POST /uploads) and results; empty = off "
            "(every input and result stays in Redis)."
        ),
    )
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (http(s)://host:port); empty = AWS S3.")
    aws_region: str = Field("us-east-1", min_length=1, description="Region the S3 requests are signed for.")
    aws_access_key_id: str = Field("", description="S3 access key; empty = the AWS SDK's own chain (IRSA, instance role).")
    aws_access_key_id_file: str = Field("", description="File holding AWS_ACCESS_KEY_ID (a mounted Secret); wins over it.")
    aws_secret_access_key: str = Field("", description="S3 secret key; prefer AWS_SECRET_ACCESS_KEY_FILE.")
    aws_secret_access_key_file: str = Field(
        "", description="File holding AWS_SECRET_ACCESS_KEY (a mounted Secret); wins over it."
    )
    object_store_allowed: str = Field(
        "", description="Comma-separated s3://bucket/prefix that `input_url` may also name besides OBJECT_STORE_URL."
    )
    max_object_bytes: int = Field(1_073_741_824, ge=1, description="Largest input object (`input_url`); larger fails at submit.")
    inline_result_max_bytes: int = Field(
        65_536,
        ge=0,
        description="Larger results are written to the object store (the job view's `result_url`), and so is larger"
        " OIP binary tensor data (as an input object).",
    )
    presign_expiry_seconds: int = Field(
        3600, ge=60, le=604_800, description="Lifetime of presigned upload (POST /uploads) and result URLs."
    )
    object_store_timeout_seconds: float = Field(
        10, gt=0, le=300, description="Connect and read timeout of one object-store request; past it the store counts as down."
    )

    # -- processes -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="API listen address.")
    port: int = Field(8000, ge=0, le=65535, description="API listen port.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="API: separate /metrics listener (not routed by the Ingress); 0 = on PORT."
    )
    worker_health_port: int = Field(0, ge=0, le=65535, description="Worker/notifier probes and /metrics; 0 = none.")
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error|critical)$", description="Log level.")
    tracing_headers_file: str = Field(
        "",
        description=(
            "File holding the OTLP exporter's headers (`key=value,...`, as OTEL_EXPORTER_OTLP_HEADERS; a mounted "
            "Secret, e.g. a vendor's API key); read when tracing is on (README: Tracing)."
        ),
    )
    log_format: str = Field(
        "text",
        pattern=r"^(text|json)$",
        description="`json`: one JSON object per line (time, level, message, job_id, model, trace_id, span_id where known).",
    )

    # -- Kubernetes ------------------------------------------------------------------------------
    pod_name: str = Field(
        "", description="Worker: its own pod's name (downward API); set, it keeps the pod-deletion-cost current; empty = off."
    )
    pod_namespace: str = Field("", description="Worker: its pod's namespace (downward API); empty = its service account's.")
    deletion_cost_debounce_seconds: float = Field(
        5, ge=1, le=3600, description="Worker: how long busy or idle must hold before its pod-deletion-cost changes."
    )

    @field_validator("default_model", "model_name")
    @classmethod
    def _model_name_shape(cls, value: str) -> str:
        if value and not re.match(MODEL_NAME_PATTERN, value):
            raise ValueError(f"{value!r} is not a valid model name (lower-case letters, digits, '-'; at most 40)")
        return value

    @model_validator(mode="after")
    def _settings_that_work_together(self) -> Settings:
        if self.recovery_interval_seconds > self.worker_ttl_seconds * 10:
            raise ValueError("RECOVERY_INTERVAL_SECONDS must be at most 10x WORKER_TTL_SECONDS")
        if self.request_ttl_seconds and self.request_ttl_seconds > self.job_ttl_seconds * 1000:
            raise ValueError("REQUEST_TTL_SECONDS is beyond any sensible JOB_TTL_SECONDS multiple")
        if self.redis_replica_ack_timeout_ms >= self.redis_deadline_seconds * 1000:
            raise ValueError("REDIS_REPLICA_ACK_TIMEOUT_MS must be below REDIS_DEADLINE_SECONDS (the WAIT is inside it)")
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError("REDIS_CLUSTER and REDIS_SENTINELS exclude each other: a Cluster fails over on its own")
        if self.queue_shards > 1 and not self.redis_cluster:
            raise ValueError("QUEUE_SHARDS > 1 needs REDIS_CLUSTER: shards spread a queue over a Cluster's masters")
        if self.redis_cluster and ("{" in self.key_prefix or "}" in self.key_prefix):
            raise ValueError("KEY_PREFIX must not hold a hash tag ({...}) with REDIS_CLUSTER: the models' tags follow it")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("METRICS_PORT must differ from PORT")
        return self

    @property
    def heartbeat_interval_seconds(self) -> float:
        """A third of the TTL, so two heartbeats can be missed before a worker counts as dead."""
        return self.worker_ttl_seconds / 3

    def secret(self, value: str, file: str) -> str:
        """A secret from its file when one is named (a mounted Secret, rotated in place), else the value."""
        return Path(file).read_text().strip() if file else value

    @property
    def redis_password_value(self) -> str:
        return self.secret(self.redis_password, self.redis_password_file)

    @property
    def webhook_secret_value(self) -> str:
        return self.secret(self.webhook_secret, self.webhook_secret_file)

    @property
    def aws_access_key_id_value(self) -> str:
        return self.secret(self.aws_access_key_id, self.aws_access_key_id_file)

    @property
    def aws_secret_access_key_value(self) -> str:
        return self.secret(self.aws_secret_access_key, self.aws_secret_access_key_file)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


def markdown_table() -> str:
    """The README's settings table, generated from the fields above (a test keeps README in step)."""
    rows = ["| variable | default | allowed | what it does |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        bounds = []
        for item in field.metadata:
            for attr, sign in (
                ("ge", ">="),
                ("gt", ">"),
                ("le", "<="),
                ("lt", "<"),
                ("min_length", "length >="),
                ("max_length", "length <="),
            ):
                value = getattr(item, attr, None)
                if value is not None:
                    bounds.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
            pattern = getattr(item, "pattern", None)
            if pattern:
                bounds.append(f"`{pattern}`")
        default = field.default
        shown = f"`{str(default).lower() if isinstance(default, bool) else default}`" if default != "" else "(empty)"
        rows.append(f"| `{name.upper()}` | {shown} | {', '.join(bounds)} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m jobqueue.settings > table (make docs splices it into README.md)
    print(markdown_table())
