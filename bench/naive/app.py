"""Naive API, as the seed design says: three separate Redis writes per submit, plain GET to poll.

Run with the same uvicorn settings as ours: `python -m bench.naive.app` (REDIS_URL, PORT, QUEUE_NAME).
"""

import os
import uuid

import redis.asyncio as redis
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

QUEUE = os.environ.get("QUEUE_NAME", "naive:queue")
app = FastAPI()
client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), decode_responses=True)


class PredictRequest(BaseModel):
    data: list[list[float]]


@app.post("/predict", status_code=202)
async def predict(request: PredictRequest) -> dict:
    job_id = str(uuid.uuid4())
    await client.set(f"job:{job_id}:status", "pending")
    await client.set(f"job:{job_id}:input", request.model_dump_json())
    await client.lpush(QUEUE, job_id)
    return {"job_id": job_id, "status": "pending"}


@app.get("/job/{job_id}")
async def get_job(job_id: str) -> dict:
    status = await client.get(f"job:{job_id}:status")
    if status is None:
        raise HTTPException(404, "job not found")
    result = await client.get(f"job:{job_id}:result") if status == "completed" else None
    return {"job_id": job_id, "status": status, "result": result}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8100")), access_log=False, log_level="warning")
