"""Admin HTTP endpoints of the KV index: which pods hold this prompt's prefix, and how much.

``POST /admin/kv/lookup`` with ``{"model", "prompt" | "messages" | "prompt_token_ids", "cache_salt"?}``
answers
``{"model", "adapter", "prompt_tokens", "pods": [{"pod", "blocks", "tokens", "share", "weighted", "block_size"}]}``
(best first). ``GET /admin/kv/pods`` lists the blocks each pod holds per the index; ``GET /admin/kv/pods/{pod}``
lists that pod's engine block hashes per medium (to compare with the engine's own cache).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from brixmesh.router.kv.index import PrefixIndex
from brixmesh.router.kv.tokenizer import PromptTokenizer, TokenizerError


class LookupRequest(BaseModel):
    model: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt_token_ids: list[int] | None = None
    cache_salt: str | None = Field(default=None, min_length=1)


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


def add_admin_routes(
    app: FastAPI, index: PrefixIndex, tokenizer: PromptTokenizer, base_model_of: Any
) -> None:
    @app.post("/admin/kv/lookup")
    async def lookup(request: Request) -> JSONResponse:
        try:
            body = LookupRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            return _error(400, f"invalid lookup request: {first['msg']}", ".".join(map(str, first["loc"])) or None)
        base = base_model_of(body.model) or body.model
        adapter = body.model if base != body.model else None
        if body.prompt_token_ids is not None:
            tokens = body.prompt_token_ids
        elif body.prompt is None and body.messages is None:
            return _error(400, "give one of prompt, messages or prompt_token_ids", "prompt")
        else:
            try:
                tokens = await tokenizer.tokens(base, prompt=body.prompt, messages=body.messages)
            except TokenizerError as exc:
                return _error(400, str(exc), "messages" if body.messages is not None else "prompt")
            if tokens is None:
                return _error(503, f"no tokenizer for model {base!r} and no engine to ask", "model")
        pods = [pod for pod in index.pods if index.pod_model(pod) == base]
        sizes = {index.block_size(pod) for pod in pods} - {0}
        found = []
        for size in sorted(sizes):
            hashes = index.prompt_hashes(tokens, size, base, adapter, body.cache_salt)
            names = [pod for pod in pods if index.block_size(pod) == size]
            for pod, match in index.match(hashes, size, names).items():
                found.append({
                    "pod": pod, "blocks": match.blocks, "tokens": match.tokens, "block_size": size,
                    "weighted": round(match.weighted, 3), "share": round(match.blocks / len(hashes), 4) if hashes else 0.0,
                })  # fmt: skip
        found.sort(key=lambda item: (-item["tokens"], item["pod"]))
        return JSONResponse({"model": body.model, "adapter": adapter, "prompt_tokens": len(tokens), "pods": found})

    @app.get("/admin/kv/pods")
    async def pods() -> JSONResponse:
        return JSONResponse({
            "blocks": index.blocks,
            "pods": [
                {"pod": pod, "model": index.pod_model(pod), "block_size": index.block_size(pod),
                 "blocks": index.pod_blocks(pod)}
                for pod in sorted(index.pods)
            ],
        })  # fmt: skip

    @app.get("/admin/kv/pods/{pod}")
    async def pod_hashes(pod: str) -> JSONResponse:
        if pod not in index.pods:
            return _error(404, f"the index holds no pod {pod!r}", "pod")
        return JSONResponse({
            "pod": pod, "model": index.pod_model(pod), "block_size": index.block_size(pod),
            "media": {medium: sorted(index.engine_hashes(pod, medium)) for medium in index.media(pod)},
        })  # fmt: skip
