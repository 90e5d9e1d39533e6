"""The HTTP surface of one simulated engine: vLLM 0.32's OpenAI server routes plus ``/admin/faults``."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from brixmesh.engine_sim.errors import ApiError, error_response, model_not_found
from brixmesh.engine_sim.logprobs import LogprobMaker
from brixmesh.engine_sim.lora import LoraError
from brixmesh.engine_sim.protocol import (
    GenerationParams,
    chat_messages,
    completion_prompt,
    generation_params,
    missing_field,
    parse_json_body,
)
from brixmesh.engine_sim.pooling import classify_body, embeddings_body, rerank_body, score_body
from brixmesh.engine_sim.replica import VLLM_VERSION, Replica
from brixmesh.engine_sim.request import SimRequest
from brixmesh.engine_sim.responses import SSE_DONE, ChunkWriter, chat_body, completion_body, new_id
from brixmesh.engine_sim.responses_api import EventWriter, as_chat_body, new_response_id, response_object
from brixmesh.engine_sim.textgen import TokenStream
from brixmesh.engine_sim.tokenizer import StopStringMatcher
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

_ENCODE = msgspec.json.encode
CORRUPTED_SEED_OFFSET = 0x5DC
"""With the ``corrupt_output`` fault, every request samples as if its seed were this much higher."""


def _json(payload: Any, status: int = 200) -> Response:
    return Response(_ENCODE(payload), status, media_type="application/json")


class EngineApp:
    def __init__(self, replica: Replica) -> None:
        self.r = replica
        tok = replica.tokenizer
        self.first_regular_id = max(tok.special_ids) + 1 if tok.special_ids else 0
        self.logprobs = LogprobMaker(tok, self.first_regular_id)

    # ----- helpers -------------------------------------------------------------------------------

    def _resolve_model(self, name: str | None) -> tuple[str, str | None, str | None, int | None]:
        """(model name to echo, adapter name, adapter path, adapter id) or a 404."""
        cfg = self.r.config
        if name is None or name in cfg.served_model_names or name == cfg.model:
            return (name or cfg.served_model_name, None, None, None)
        adapter = self.r.lora.get(name)
        if adapter is None:
            raise model_not_found(name, cfg.served_model_names)
        return (name, adapter.name, adapter.path, adapter.int_id)

    def _check_length(self, prompt_ids: list[int], max_tokens: int | None) -> int:
        """Output token budget; like vLLM, a too-large max_tokens is capped by the context, not refused."""
        limit = self.r.config.max_model_len
        n = len(prompt_ids)
        if n >= limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your prompt contains at least "
                f"{n} input tokens, which exceeds this limit even without any output tokens. Please reduce the "
                f"length of the input prompt. (parameter=input_tokens, value={n})",
                "BadRequestError",
                "input_tokens",
            )
        room = limit - n
        return room if max_tokens is None else min(max_tokens, room)

    async def _gate(self, request: Request) -> None:
        """Faults that hit every generation request before it reaches the engine."""
        faults = self.r.faults
        while faults.hang:
            await asyncio.sleep(0.05)
        forced = request.headers.get("x-return-error")
        if forced:
            try:
                status = int(forced)
            except ValueError:
                raise ApiError(400, f"invalid X-Return-Error header {forced!r}", "BadRequestError") from None
            raise ApiError(status, f"Injected error {status} (X-Return-Error).", "InjectedError")
        picked = faults.pick_error(self.r.rng)
        if picked is not None:
            raise ApiError(picked[0], picked[2], picked[1])
        limit = self.r.config.max_waiting_queue_length
        if limit is not None and len(self.r.scheduler.waiting) >= limit:
            raise ApiError(429, "The waiting queue is full; retry later.", "RateLimitError")

    def _response_kv_params(self, request: SimRequest) -> dict[str, Any] | None:
        transfer = self.r.transfer
        if request.kv_lease_key is None or transfer is None or transfer.config.connector == "sglang":
            return None
        return transfer.response_params(request, self.r.kv.block_ids(request.request_id), self.r.engine_id)

    async def _plan_transfer(
        self, body: dict[str, Any], params: GenerationParams, requests: list[SimRequest]
    ) -> None:
        """P/D: a prefill holds its KV for a decode engine; a decode pulls the prompt's KV (or, with shared
        storage, reads it) and computes only the rest. Without a transfer config the fields are ignored."""
        transfer = self.r.transfer
        if transfer is None:
            return
        lease_key = transfer.lease_key(body, params.kv_transfer_params)
        if lease_key is not None:
            for request in requests:
                request.max_tokens = 1
                request.kv_lease_key = lease_key or request.request_id
            return
        remote = transfer.remote(body, params.kv_transfer_params)
        first = requests[0]
        if remote is not None:
            seconds = await transfer.pull(remote)
        else:
            stored = transfer.stored_tokens(first.prompt_token_ids, first.cache_salt)
            seconds = transfer.storage_seconds(stored) if stored else None
        if seconds is not None:
            ready = self.r.engine.now() + seconds
            for request in requests:
                request.remote_prefill = True
                request.ready_time = ready

    def _build_requests(
        self,
        params: GenerationParams,
        prompt_ids: list[int],
        adapter: str | None,
        path: str | None,
        lora_id: int | None,
    ) -> list[SimRequest]:
        """One engine request per choice; choice i samples with seed + i (choice 0 equals an n=1 request)."""
        tok = self.r.tokenizer
        max_tokens = self._check_length(prompt_ids, params.max_tokens)
        now = self.r.engine.now()
        seed = params.seed if params.seed is not None else self.r.config.seed
        if self.r.faults.corrupt_output:
            seed += CORRUPTED_SEED_OFFSET
        return [
            SimRequest(
                request_id=new_id("req"),
                prompt_token_ids=prompt_ids,
                max_tokens=max_tokens,
                tokens=TokenStream(
                    prompt_ids,
                    tok.vocab_size,
                    self.first_regular_id,
                    tok.eos_token_id,
                    self.r.config.eos_probability,
                    seed + i,
                    adapter,
                ),
                arrival_time=now,
                ignore_eos=params.ignore_eos,
                eos_token_id=tok.eos_token_id,
                lora_name=adapter,
                lora_path=path,
                lora_int_id=lora_id,
                cache_salt=params.cache_salt,
                min_tokens=params.min_tokens,
                stop_token_ids=params.stop_token_ids,
                stop_text=StopStringMatcher(
                    tok.incremental_decoder(), params.stop, params.include_stop_str_in_output
                )
                if params.stop
                else None,
            )
            for i in range(params.n)
        ]

    async def _generate(self, http: Request, chat: bool) -> Response:
        try:
            body = parse_json_body(await http.body())
            params = generation_params(body, chat)
            model, adapter, path, lora_id = self._resolve_model(params.model)
            await self._gate(http)
            tok = self.r.tokenizer
            if chat:
                messages = chat_messages(body)
                prompt_ids = tok.encode_chat(messages, bool(body.get("add_generation_prompt", True)))
            else:
                prompt = completion_prompt(body)
                prompt_ids = list(prompt) if isinstance(prompt, list) else tok.encode(prompt)
                outside = [t for t in prompt_ids if not 0 <= t < tok.vocab_size]
                if outside:  # as vLLM's input validation
                    raise ApiError(
                        400, f"Token id {outside[0]} is out of vocabulary", "BadRequestError", "prompt"
                    )
            requests = self._build_requests(params, prompt_ids, adapter, path, lora_id)
            await self._plan_transfer(body, params, requests)
        except ApiError as exc:
            return exc.response()
        rid = new_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        updated = asyncio.Event()
        engine = self.r.engine
        if params.stream:
            for request in requests:
                request.on_update = lambda _: updated.set()
                engine.submit(request)
            return StreamingResponse(
                self._stream(requests, updated, params, rid, created, model, chat),
                media_type="text/event-stream; charset=utf-8",
            )
        # Without streaming only the end matters: don't wake the handler for every token.
        for request in requests:
            request.on_update = lambda r: updated.set() if r.is_finished else None
            engine.submit(request)
        try:
            while not all(r.is_finished for r in requests):
                await updated.wait()
                updated.clear()
        finally:
            for request in requests:
                if not request.is_finished:
                    engine.abort(request)
        texts = [self._final_text(r, params.echo and not chat) for r in requests]
        logprobs = None
        if params.logprobs is not None:
            make = self.logprobs.chat if chat else self.logprobs.completion
            logprobs = [make(r.output_token_ids, params.logprobs) for r in requests]
        builder = chat_body if chat else completion_body
        payload = builder(
            rid,
            created,
            model,
            requests,
            texts,
            self.r.fingerprint,
            self.r.config.enable_prompt_tokens_details,
            self._response_kv_params(requests[0]),
            params.return_token_ids,
            logprobs,
        )
        return Response(payload, 200, media_type="application/json")

    def _final_text(self, request: SimRequest, echo: bool) -> str:
        tok = self.r.tokenizer
        text = tok.decode(request.output_token_ids)
        if isinstance(request.stop_reason, str) and isinstance(request.stop_text, StopStringMatcher):
            text = request.stop_text.final_text
        elif text.endswith("\ufffd"):
            # Streaming never emits a trailing incomplete character; keep both forms identical.
            decoder = tok.incremental_decoder()
            text = "".join([decoder.push(t) for t in request.output_token_ids])
        return tok.decode(request.prompt_token_ids) + text if echo else text

    async def _stream(
        self,
        requests: list[SimRequest],
        updated: asyncio.Event,
        params: GenerationParams,
        rid: str,
        created: int,
        model: str,
        chat: bool,
    ) -> AsyncIterator[bytes]:
        faults = self.r.faults
        engine = self.r.engine
        writer = ChunkWriter(
            rid,
            created,
            model,
            chat,
            self.r.fingerprint,
            params.continuous_usage_stats,
            self.r.config.enable_prompt_tokens_details,
            requests,
        )
        decoders = [self.r.tokenizer.incremental_decoder() for _ in requests]
        emitted = [0] * len(requests)
        sent = [0] * len(requests)
        done = [False] * len(requests)
        stalled = False
        try:
            roles_due = chat  # as vLLM: the role chunks go out with the first output, not before the prefill
            while not all(done):
                await updated.wait()
                updated.clear()
                if roles_due:
                    roles_due = False
                    for index in range(len(requests)):
                        yield writer.role_chunk(index)
                for index, request in enumerate(requests):
                    if done[index]:
                        continue
                    tokens = request.output_token_ids
                    finished = request.is_finished
                    end = len(tokens)
                    while sent[index] < end:
                        token = tokens[sent[index]]
                        sent[index] += 1
                        last = finished and sent[index] == end
                        count = sent[index]
                        if (
                            faults.disconnect_after_tokens is not None
                            and count > faults.disconnect_after_tokens
                        ):
                            return
                        if (
                            not stalled
                            and faults.stall_after_tokens is not None
                            and count > faults.stall_after_tokens
                            and faults.stall_seconds > 0
                        ):
                            stalled = True
                            await asyncio.sleep(faults.stall_seconds)
                        kv_params = self._response_kv_params(request) if last else None
                        text = decoders[index].push(token)
                        matcher = request.stop_text
                        if (
                            last
                            and isinstance(request.stop_reason, str)
                            and isinstance(matcher, StopStringMatcher)
                        ):
                            # the stop string (and anything after it) never reaches the client
                            text = matcher.final_text[emitted[index] :]
                        logprobs = None
                        if params.logprobs is not None:
                            position = sent[index] - 1
                            logprobs = (
                                self.logprobs.chat([token], params.logprobs, position)
                                if chat
                                else self.logprobs.completion(
                                    [token], params.logprobs, position, emitted[index]
                                )
                            )
                        emitted[index] += len(text)
                        yield writer.delta_chunk(index, text, last, kv_params, logprobs)
                    done[index] = finished
            if params.include_usage:
                yield writer.usage_chunk()
            yield SSE_DONE
        finally:
            for request in requests:
                if not request.is_finished:
                    engine.abort(request)

    async def responses(self, http: Request) -> Response:
        """``/v1/responses``: one chat generation, answered as a response object or its event stream."""
        try:
            body = parse_json_body(await http.body())
            chat = as_chat_body(body)
            params = generation_params(chat, True)
            model, adapter, path, lora_id = self._resolve_model(params.model)
            await self._gate(http)
            prompt_ids = self.r.tokenizer.encode_chat(chat_messages(chat), True)
            (request,) = self._build_requests(params, prompt_ids, adapter, path, lora_id)
        except ApiError as exc:
            return exc.response()
        rid, created = new_response_id()
        updated = asyncio.Event()
        request.on_update = lambda _: updated.set()
        self.r.engine.submit(request)
        if params.stream:
            return StreamingResponse(
                self._response_events(request, updated, rid, created, model, body),
                media_type="text/event-stream; charset=utf-8",
            )
        try:
            while not request.is_finished:
                await updated.wait()
                updated.clear()
        finally:
            if not request.is_finished:
                self.r.engine.abort(request)
        return _json(self._finished_response(request, rid, created, model, body))

    def _finished_response(
        self, request: SimRequest, rid: str, created: int, model: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        usage = (request.num_prompt_tokens, request.num_output_tokens)
        text = self._final_text(request, False)
        return response_object(rid, created, model, body, text, usage, request.finish_reason == "length")

    async def _response_events(
        self,
        request: SimRequest,
        updated: asyncio.Event,
        rid: str,
        created: int,
        model: str,
        body: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        writer = EventWriter(rid)
        decoder = self.r.tokenizer.incremental_decoder()
        sent = 0
        try:
            started = response_object(rid, created, model, body, None, None)
            yield writer.event("response.created", response=started)
            while True:
                await updated.wait()
                updated.clear()
                tokens = request.output_token_ids
                delta = "".join(decoder.push(token) for token in tokens[sent:])
                sent = len(tokens)
                if delta:
                    yield writer.text_delta(delta)
                if request.is_finished:
                    break
            final = self._finished_response(request, rid, created, model, body)
            kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
            yield writer.event(kind, response=final)
        finally:
            if not request.is_finished:
                self.r.engine.abort(request)

    async def _pool(self, http: Request, build: Any) -> Response:
        """A pooling route: ``build(body, model, encode)`` makes the answer from the request body."""
        try:
            body = parse_json_body(await http.body())
            model = self._resolve_model(body.get("model"))[0]
            await self._gate(http)
            return _json(build(body, model, self.r.tokenizer.encode))
        except ApiError as exc:
            return exc.response()

    # ----- routes --------------------------------------------------------------------------------

    async def embeddings(self, http: Request) -> Response:
        return await self._pool(http, embeddings_body)

    async def pooling(self, http: Request) -> Response:
        return await self._pool(http, functools.partial(embeddings_body, object_name="pooling"))

    async def score(self, http: Request) -> Response:
        return await self._pool(http, score_body)

    async def rerank(self, http: Request) -> Response:
        return await self._pool(http, rerank_body)

    async def classify(self, http: Request) -> Response:
        return await self._pool(http, classify_body)

    async def completions(self, http: Request) -> Response:
        return await self._generate(http, chat=False)

    async def chat_completions(self, http: Request) -> Response:
        return await self._generate(http, chat=True)

    async def health(self, http: Request) -> Response:
        while self.r.faults.hang:
            await asyncio.sleep(0.05)
        return Response(status_code=200)

    async def version(self, http: Request) -> Response:
        return _json({"version": VLLM_VERSION})

    async def load(self, http: Request) -> Response:
        return _json({"server_load": self.r.engine.num_running + self.r.engine.num_waiting})

    async def models(self, http: Request) -> Response:
        cfg = self.r.config
        created = self.r.created

        def card(model_id: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
            return {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": root,
                "parent": parent,
                "max_model_len": max_len,
                "permission": [
                    {
                        "id": new_id("modelperm"),
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }

        data = [card(name, self.r.model_dir, None, cfg.max_model_len) for name in cfg.served_model_names]
        data += [card(a.name, a.path, cfg.served_model_name, None) for a in self.r.lora.adapters()]
        return _json({"object": "list", "data": data})

    async def tokenize(self, http: Request) -> Response:
        try:
            body = parse_json_body(await http.body())
            self._resolve_model(body.get("model"))
            tok = self.r.tokenizer
            if "messages" in body:
                messages = chat_messages(body)
                ids = tok.encode_chat(messages, bool(body.get("add_generation_prompt", True)))
            else:
                prompt = body.get("prompt")
                if not isinstance(prompt, str):
                    raise missing_field("prompt", body)
                ids = tok.encode(prompt, add_special_tokens=bool(body.get("add_special_tokens", True)))
        except ApiError as exc:
            return exc.response()
        token_strs = [tok.id_to_token(i) for i in ids] if body.get("return_token_strs") else None
        return _json(
            {
                "count": len(ids),
                "max_model_len": self.r.config.max_model_len,
                "tokens": ids,
                "token_strs": token_strs,
            }
        )

    async def detokenize(self, http: Request) -> Response:
        try:
            body = parse_json_body(await http.body())
            self._resolve_model(body.get("model"))
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                raise missing_field("tokens", body)
            vocab = self.r.tokenizer.vocab_size
            if any(t < 0 or t >= vocab for t in tokens):
                raise ApiError(
                    400, f"Token id out of vocabulary (size {vocab}).", "BadRequestError", "tokens"
                )
        except ApiError as exc:
            return exc.response()
        return _json({"prompt": self.r.tokenizer.decode(tokens, skip_special_tokens=False)})

    async def render(self, http: Request, chat: bool) -> Response:
        if not self.r.config.enable_scale_out:
            return error_response(403, "Render endpoints need --enable-scale-out.", "Forbidden")
        try:
            body = parse_json_body(await http.body())
            params = generation_params(body, chat)
            model, *_ = self._resolve_model(params.model)
            tok = self.r.tokenizer
            if chat:
                ids = tok.encode_chat(chat_messages(body), bool(body.get("add_generation_prompt", True)))
            else:
                prompt = completion_prompt(body)
                ids = list(prompt) if isinstance(prompt, list) else tok.encode(prompt)
            max_tokens = self._check_length(ids, params.max_tokens)
        except ApiError as exc:
            return exc.response()
        rendered = {
            "request_id": new_id("chatcmpl" if chat else "cmpl"),
            "token_ids": ids,
            "model": model,
            "sampling_params": {"max_tokens": max_tokens},
            "stream": params.stream,
            "cache_salt": params.cache_salt,
            "kv_transfer_params": params.kv_transfer_params,
        }
        return _json(rendered if chat else [rendered])

    async def chat_render(self, http: Request) -> Response:
        return await self.render(http, chat=True)

    async def completions_render(self, http: Request) -> Response:
        return await self.render(http, chat=False)

    async def load_lora(self, http: Request) -> Response:
        if not self.r.config.enable_lora:
            return error_response(400, "LoRA is not enabled (start with --enable-lora).", "BadRequestError")
        try:
            body = parse_json_body(await http.body())
            for field_name in ("lora_name", "lora_path"):
                if field_name not in body:
                    raise missing_field(field_name, body)
            name = body.get("lora_name") or ""
            path = body.get("lora_path") or ""
            inplace = bool(body.get("load_inplace", False))
            self.r.lora.check_load(name, path, inplace)
            faults = self.r.faults
            if faults.lora_load_delay_s > 0:
                await asyncio.sleep(faults.lora_load_delay_s)
            if faults.lora_load_fail:
                raise LoraError(500, "InternalServerError", f"Loading lora {name} failed: injected failure")
            self.r.lora.load(name, path, inplace)
        except ApiError as exc:
            return exc.response()
        except LoraError as exc:
            return error_response(exc.status, exc.message, exc.error_type)
        return Response(f"Success: LoRA adapter '{name}' added successfully.".encode(), 200)

    async def unload_lora(self, http: Request) -> Response:
        try:
            body = parse_json_body(await http.body())
            if "lora_name" not in body:
                raise missing_field("lora_name", body)
        except ApiError as exc:
            return exc.response()
        return self._unload(body.get("lora_name") or "")

    async def delete_adapter(self, http: Request) -> Response:
        return self._unload(http.path_params["name"])

    def _unload(self, name: str) -> Response:
        if not self.r.config.enable_lora:
            return error_response(400, "LoRA is not enabled (start with --enable-lora).", "BadRequestError")
        try:
            self.r.lora.unload(name)
        except LoraError as exc:
            return error_response(exc.status, exc.message, exc.error_type)
        return Response(f"Success: LoRA adapter '{name}' removed successfully.".encode(), 200)

    async def metrics(self, http: Request) -> Response:
        faults = self.r.faults
        if faults.metrics_delay_s > 0:
            await asyncio.sleep(faults.metrics_delay_s)
        if faults.metrics_error_rate > 0 and self.r.rng.random() < faults.metrics_error_rate:
            return PlainTextResponse("injected metrics failure", 500)
        return Response(self.r.metrics.render(), 200, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def reset_prefix_cache(self, http: Request) -> Response:
        if not self.r.engine.reset_prefix_cache():
            return error_response(
                400, "Failed to reset prefix cache: blocks are still in use.", "BadRequestError"
            )
        return _json({"success": True})

    async def kv_event_sources(self, http: Request) -> Response:
        cfg = self.r.config.kv_events_config
        return _json({"0": dataclasses.asdict(cfg)} if cfg is not None else {})

    async def get_faults(self, http: Request) -> Response:
        return _json(self.r.faults.as_dict())

    async def post_faults(self, http: Request) -> Response:
        try:
            body = parse_json_body(await http.body())
            self.r.faults.update(body)
        except ApiError as exc:
            return exc.response()
        except (ValueError, TypeError) as exc:
            return error_response(400, str(exc), "BadRequestError")
        self.r.apply_publisher_faults()
        return _json(self.r.faults.as_dict())

    async def kv_blocks(self, http: Request) -> Response:
        return _json({"block_size": self.r.config.block_size, "hashes": sorted(self.r.kv.cached_block_hashes())})

    async def stats(self, http: Request) -> Response:
        engine = self.r.engine
        return _json(
            {
                "steps": engine.num_steps,
                "busy_seconds": engine.busy_seconds,
                "lag_seconds": engine.lag_seconds,
                "running": engine.num_running,
                "waiting": engine.num_waiting,
                "kv_cache_usage": self.r.kv.usage,
                "num_gpu_blocks": self.r.num_gpu_blocks,
                "max_num_batched_tokens": self.r.max_num_batched_tokens,
                "max_num_seqs": self.r.max_num_seqs,
            }
        )

    async def sleep(self, http: Request) -> Response:
        level = int(http.query_params.get("level", "1"))
        self.r.engine.sleep_level = level
        set_level = getattr(self.r.metrics, "set_sleep_level", None)
        if set_level is not None:
            set_level(level)
        self.r.engine.reset_prefix_cache()
        return Response(status_code=200)

    async def wake_up(self, http: Request) -> Response:
        self.r.engine.sleep_level = 0
        set_level = getattr(self.r.metrics, "set_sleep_level", None)
        if set_level is not None:
            set_level(0)
        return Response(status_code=200)

    async def is_sleeping(self, http: Request) -> Response:
        return _json({"is_sleeping": self.r.engine.sleep_level > 0})


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, exc.status_code)


class ApiKeyMiddleware:
    """vLLM's ``--api-key``: every ``/v1`` route needs ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != self.expected:
                await JSONResponse({"error": "Unauthorized"}, 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(replica: Replica) -> Starlette:
    api = EngineApp(replica)
    routes = [
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions/render", api.completions_render, methods=["POST"]),
        Route("/v1/chat/completions/render", api.chat_render, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/responses", api.responses, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/pooling", api.pooling, methods=["POST"]),
        Route("/classify", api.classify, methods=["POST"]),
        *(Route(path, api.score, methods=["POST"]) for path in ("/score", "/v1/score")),
        *(Route(path, api.rerank, methods=["POST"]) for path in ("/rerank", "/v1/rerank", "/v2/rerank")),
        Route("/health", api.health, methods=["GET"]),
        Route("/ping", api.health, methods=["GET", "POST"]),
        Route("/health/ready", api.health, methods=["GET"]),
        Route("/version", api.version, methods=["GET"]),
        Route("/load", api.load, methods=["GET"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/detokenize", api.detokenize, methods=["POST"]),
        Route("/v1/load_lora_adapter", api.load_lora, methods=["POST"]),
        Route("/v1/unload_lora_adapter", api.unload_lora, methods=["POST"]),
        Route("/adapters", api.load_lora, methods=["POST"]),
        Route("/adapters/{name}", api.delete_adapter, methods=["DELETE"]),
        # SGLang's paths, so SGLang-targeting adapter managers work too
        Route("/load_lora_adapter", api.load_lora, methods=["POST"]),
        Route("/unload_lora_adapter", api.unload_lora, methods=["POST"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/reset_prefix_cache", api.reset_prefix_cache, methods=["POST"]),
        Route("/kv_event_sources", api.kv_event_sources, methods=["GET"]),
        Route("/admin/faults", api.get_faults, methods=["GET"]),
        Route("/admin/faults", api.post_faults, methods=["POST"]),
        Route("/admin/stats", api.stats, methods=["GET"]),
        Route("/admin/kv/blocks", api.kv_blocks, methods=["GET"]),
        Route("/sleep", api.sleep, methods=["POST"]),
        Route("/wake_up", api.wake_up, methods=["POST"]),
        Route("/is_sleeping", api.is_sleeping, methods=["GET"]),
    ]
    middleware = []
    if replica.config.api_key:
        middleware.append(Middleware(ApiKeyMiddleware, api_key=replica.config.api_key))
    return Starlette(
        routes=routes, exception_handlers={HTTPException: _http_exception}, middleware=middleware
    )
