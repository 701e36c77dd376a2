"""`t2l serve`: an OpenAI-compatible server that makes a LoRA adapter from each request's description.

Python API:
    from t2lcli.engine.serve.engine import ServeEngine, ServeSettings
    from t2lcli.engine.serve.app import create_app
    engine = ServeEngine.load(checkpoint, base_model, profile, ServeSettings(max_batch=8))
    app = create_app(engine, api_key=None)            # an ASGI app; `t2l serve` runs it under uvicorn

Route contract (JSON unless said; every error is `{"error": {"message", "type", "param", "code"}}` with a 4xx for bad
client input, 401 for a missing/wrong key, 413 for a body over 1 MiB, 503 + `Retry-After` when the queue is full):

    POST /v1/chat/completions   OpenAI body: model, messages, max_tokens | max_completion_tokens, temperature (default 1;
                                0 = greedy), top_p, stop (str or <= 4 str), seed, n=1, stream, stream_options.include_usage
    POST /v1/completions        the same with prompt (one string) instead of messages
        choosing the adapter:   model "<base>"          no adapter (GET /v1/models names the base)
                                model "t2l:<id>"        a cached adapter (404 adapter_not_found when not cached)
                                "t2l": {"description": str, "scale": 1.0, "scaling": "rslora"|"lora", "name": str}
                                                        with model "<base>": generate or reuse the adapter of this
                                                        description (the openai client sends it with extra_body)
        response: the OpenAI object ("chat.completion" / "text_completion"; `model` is "t2l:<id>" when an adapter answered)
                  plus a top-level "t2l": {"adapter_id": str|null, "cached": bool|null, "generate_ms": float (ms this
                  request spent generating its adapter; 0 when cached or none), "batch_size": rows decoded together,
                  "queue_ms", "decode_ms"}
        stream: true -> text/event-stream of `data: {chunk}` lines (chat: first delta {"role": "assistant"}, then
                  {"content": ...}, then finish_reason; every chunk carries the "t2l" object, timings complete in the
                  last one), a usage chunk when stream_options.include_usage, then `data: [DONE]`. An error after the
                  stream started is one `data: {"error": {...}}` line before [DONE].
    GET  /v1/models             {"object": "list", "data": [{"id": base, "parent": null, ...},
                                 {"id": "t2l:<id>", "parent": base, "root": "t2l:<id>", "description": ...}, ...]}
    POST /v1/adapters           {"description": str} or {"descriptions": [str, ...<= 64]}, "scale", "scaling", "name"
                                -> {"id", "object": "adapter", "model": "t2l:<id>", "parent", "name", "description",
                                    "scale", "scaling", "generate_ms", "created", "bytes", "cached"}
                                   (descriptions: {"object": "list", "data": [one such object per description]})
    GET  /v1/adapters           {"object": "list", "data": [adapter objects, most recently used first]}
    GET  /v1/adapters/{id}      the adapter object + "config" (adapter_config.json), "metadata" (t2l_adapter.json), "card"
    GET  /v1/adapters/{id}/download   application/zip of the PEFT folder `t2l generate` writes (same tensors, bytes)
    DELETE /v1/adapters/{id}    {"id", "object": "adapter", "deleted": true}
    GET  /health                {"status": "ok", "model", "adapters", "queue", "max_batch"} (no auth)
    GET  /metrics               Prometheus text (no auth): t2l_requests_total{route,method,status},
                                t2l_adapter_cache_{hits,misses,evictions}_total, t2l_adapter_generate_ms, t2l_generated_tokens_total,
                                t2l_tokens_per_second, t2l_queue_depth, t2l_batch_size, t2l_adapter_cache_{size,bytes}
    GET  /                      the web page (static/index.html of this package); /static/* its files

An adapter's id is the sha256 of the float32 `adapter_model.safetensors` that `t2l generate` writes for it (the
`sha256` of `t2l generate --json`, and the id the vLLM resolver answers `t2l:<id>` with); `t2l:<id>` also takes a unique
prefix of 12+ hex digits. The same checkpoint, description, scale and scaling map to the same cached adapter.
With --api-key-file every /v1 route needs `Authorization: Bearer KEY`.
"""
