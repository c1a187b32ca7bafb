"""The bounded queue in front of a `serve` process's model."""
from __future__ import annotations

import asyncio

from genderfusion.fusion.predict.rows import PhotoPredictor
from genderfusion.fusion.serve.uploads import Limits, RequestError


class ModelQueue:
    """The requests waiting for the one model of a process: at most `limits.queue` wait (more get 503), one
    runs at a time, in a worker thread, and each has `limits.timeout_s` (then 504)."""

    def __init__(self, predictor: PhotoPredictor, limits: Limits):
        self.predictor, self.limits = predictor, limits
        self._lock = asyncio.Lock()
        self.waiting = 0

    def _predict(self, images: list[tuple[str, bytes]]) -> list[dict]:
        return self.predictor.rows([d for _, d in images], [n for n, _ in images])

    async def _run(self, images: list[tuple[str, bytes]]) -> list[dict]:
        await self._lock.acquire()
        task = asyncio.get_running_loop().run_in_executor(None, self._predict, images)
        task.add_done_callback(lambda _: self._lock.release())  # held until the model is free, answered or not
        return await asyncio.shield(task)

    async def __call__(self, images: list[tuple[str, bytes]]) -> list[dict]:
        if self.waiting >= self.limits.queue:
            raise RequestError(503, f"busy: {self.waiting} requests already wait (the queue holds "
                                    f"{self.limits.queue}); retry shortly")
        self.waiting += 1
        try:
            return await asyncio.wait_for(self._run(images), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within the limit of {self.limits.timeout_s} s (waiting included)"
                               ) from None
        finally:
            self.waiting -= 1
