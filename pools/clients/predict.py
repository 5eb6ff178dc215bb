"""The classic RENT-A-HAL worker format: POST /predict, answer {"response": ...}, GET /health."""
from __future__ import annotations

import aiohttp

from .base import CallLimits, ChunkCallback, ModelAnswer, ModelClient, ModelRequest, malformed, post_for_answer, probe_status


class PredictClient(ModelClient):
    wire_format = "predict"

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        """Send the query the way webgui.py did; the classic worker answers in one piece."""
        payload = {
            "prompt": request.prompt,
            "type": request.query_type,
            "model_type": request.model_type,
            "model_name": request.model_name,
        }
        if request.image is not None:
            payload["image"] = request.image
        async with post_for_answer(session, worker, "/predict", payload, limits=limits) as body:
            data = await body.json()
        result = data.get("response") if isinstance(data, dict) else None
        if not isinstance(result, str):
            raise malformed(worker, 'expected {"response": "<text>"}')
        return ModelAnswer(result=result, time_to_first_byte=body.time_to_first_byte)

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        return await probe_status(session, worker, "/health", timeout=timeout)
