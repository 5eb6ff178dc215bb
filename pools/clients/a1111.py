"""The AUTOMATIC1111 SD-WebUI format: POST /sdapi/v1/txt2img, answer {"images": [base64 PNG]}."""
from __future__ import annotations

import aiohttp

from .base import CallLimits, ChunkCallback, ModelAnswer, ModelClient, ModelRequest, malformed, post_for_answer

# The settings the original broker sent with every imagine query (docs/protocol.md §2).
TXT2IMG_SETTINGS = {
    "negative_prompt": "",
    "steps": 50,
    "sampler_name": "Euler a",
    "cfg_scale": 7,
    "width": 512,
    "height": 512,
    "seed": -1,
}


class A1111Client(ModelClient):
    wire_format = "a1111"

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        """Ask for one image; A1111 does not stream, so `on_chunk` is never called."""
        size = {name: request.options[name] for name in ("width", "height") if name in request.options}
        payload = {"prompt": request.prompt, **TXT2IMG_SETTINGS, **size}
        async with post_for_answer(session, worker, "/sdapi/v1/txt2img", payload, limits=limits) as body:
            data = await body.json()
        images = data.get("images") if isinstance(data, dict) else None
        if not images or not isinstance(images, list) or not isinstance(images[0], str):
            raise malformed(worker, 'expected {"images": ["<base64 PNG>", ...]}')
        return ModelAnswer(result=images[0], result_type="image", time_to_first_byte=body.time_to_first_byte)

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        """Return None: A1111 has no health route, and the original never blacklisted it for that."""
        return None
