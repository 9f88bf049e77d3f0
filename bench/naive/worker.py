"""Naive worker, as the seed design says: BRPOP one job, one model call per job, write the result."""

import json
import os

import numpy as np
import onnxruntime as ort
import redis

QUEUE = os.environ.get("QUEUE_NAME", "naive:queue")
LABELS = ["setosa", "versicolor", "virginica"]


def main() -> None:
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), decode_responses=True)
    session = ort.InferenceSession(os.environ.get("MODEL_PATH", "models/iris.onnx"), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    while True:
        popped = client.brpop(QUEUE, timeout=1)
        if popped is None:
            if os.environ.get("BURST"):
                return
            continue
        job_id = popped[1]
        client.set(f"job:{job_id}:status", "processing")
        data = json.loads(client.get(f"job:{job_id}:input"))["data"]
        label, probabilities = session.run(None, {input_name: np.asarray(data, dtype=np.float32)})
        result = {"prediction": int(label[0]), "class_name": LABELS[int(label[0])], "probabilities": probabilities[0].tolist()}
        client.set(f"job:{job_id}:result", json.dumps(result))
        client.set(f"job:{job_id}:status", "completed")


if __name__ == "__main__":
    main()
