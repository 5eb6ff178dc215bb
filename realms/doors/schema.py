"""The HTTP doors in the OpenAPI schema: /v1 and the classic routes are plain async views,
not DRF's, so drf-spectacular cannot see them; this hook adds their description to
/api/schema/ (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"])."""

BEARER = [{"apiKey": []}]


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def answers(ok: dict, *, error: str = "OpenAIError") -> dict:
    refusal = {"content": {"application/json": {"schema": ref(error)}}}
    return {
        "200": {"description": "The answer", "content": {"application/json": {"schema": ok}}},
        **{status: {"description": reason, **refusal} for status, reason in (
            ("400", "Bad request"), ("401", "No valid API key"), ("402", "Over budget"), ("403", "Not allowed"),
            ("404", "Unknown model"), ("429", "Over a limit"), ("502", "The model server failed"), ("503", "No worker, or Redis restarting"),
        )},
    }


TEXT = {"type": "string"}
MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"oneOf": [TEXT, {"type": "array", "items": {"type": "object", "properties": {
            "type": {"type": "string", "enum": ["text", "image_url"]}, "text": TEXT,
            "image_url": {"type": "object", "properties": {"url": TEXT}},
        }}}]},
    },
}
SCHEMAS = {
    "OpenAIError": {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "message": TEXT, "type": TEXT, "code": TEXT, "param": {"type": "string", "nullable": True}}}}},
    "ClassicError": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": TEXT, "message": TEXT}}}},
    "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string", "description": "A pool alias ($CHAT), a realm, a worker or a model a worker serves"},
        "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1}, "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "stop": {"oneOf": [TEXT, {"type": "array", "items": TEXT, "maxItems": 4}]},
        "n": {"type": "integer", "enum": [1]}, "user": TEXT,
    }},
    "ChatCompletion": {"type": "object", "properties": {
        "id": TEXT, "object": TEXT, "created": {"type": "integer"}, "model": TEXT,
        "choices": {"type": "array", "items": {"type": "object"}}, "usage": {"type": "object"}}},
    "Model": {"type": "object", "properties": {"id": TEXT, "object": TEXT, "created": {"type": "integer"}, "owned_by": TEXT, "kind": TEXT}},
    "ImageRequest": {"type": "object", "required": ["prompt"], "properties": {
        "prompt": TEXT, "model": TEXT, "n": {"type": "integer", "enum": [1]}, "size": TEXT,
        "response_format": {"type": "string", "enum": ["b64_json", "url"]}}},
    "EmbeddingsRequest": {"type": "object", "required": ["model", "input"], "properties": {
        "model": TEXT, "input": {"oneOf": [TEXT, {"type": "array", "items": TEXT}]},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]}}},
    "ClassicQuery": {"type": "object", "required": ["prompt"], "properties": {
        "prompt": TEXT, "model_type": TEXT, "model_name": TEXT, "image": {"type": "string", "description": "base64 (vision)"}}},
    "QueryResult": {"type": "object", "properties": {
        "query_id": TEXT, "result": TEXT, "result_type": TEXT, "processing_time": {"type": "number"},
        "cost": {"type": "number"}, "worker": TEXT}},
}


def post(operation: str, summary: str, body: str, ok: dict, *, tag: str, error: str = "OpenAIError") -> dict:
    return {"post": {"operationId": operation, "summary": summary, "tags": [tag], "security": BEARER, "requestBody": json_body(ref(body)),
                     "responses": answers(ok, error=error)}}


def classic(operation: str, summary: str, body: dict) -> dict:
    return {"post": {"operationId": operation, "summary": summary, "tags": ["classic"], "security": BEARER, "requestBody": json_body(body),
                     "responses": answers(ref("QueryResult"), error="ClassicError")}}


PATHS = {
    "/v1/chat/completions": post("v1_chat_completions", "Chat or vision completion, plain or streamed (SSE)", "ChatCompletionRequest", ref("ChatCompletion"), tag="v1"),
    "/v1/models": {"get": {"operationId": "v1_models_list", "summary": "Models the key may use", "tags": ["v1"], "security": BEARER,
                           "responses": answers({"type": "object", "properties": {"data": {"type": "array", "items": ref("Model")}}})}},
    "/v1/models/{model}": {"get": {"operationId": "v1_models_retrieve", "summary": "One model", "tags": ["v1"], "security": BEARER,
                                   "parameters": [{"name": "model", "in": "path", "required": True, "schema": TEXT}],
                                   "responses": answers(ref("Model"))}},
    "/v1/images/generations": post("v1_images_generations", "Generate an image (imagine realm)", "ImageRequest", {"type": "object"}, tag="v1"),
    "/v1/embeddings": post("v1_embeddings", "Embeddings from Ollama or OpenAI-format workers", "EmbeddingsRequest", {"type": "object"}, tag="v1"),
    "/api/chat": classic("classic_chat", "Classic chat query", ref("ClassicQuery")),
    "/api/vision": classic("classic_vision", "Classic vision query", ref("ClassicQuery")),
    "/api/imagine": classic("classic_imagine", "Classic imagine query", ref("ClassicQuery")),
    "/api/whisper": classic("classic_whisper", "Speech to text", {"type": "object", "required": ["audio"], "properties": {"audio": TEXT, "model_name": TEXT}}),
    "/api/bark": classic("classic_bark", "Text to speech", {"type": "object", "required": ["text"], "properties": {"text": TEXT, "model_name": TEXT}}),
}


def add_doors(result, generator, request, public):
    """Add /v1 and the classic routes, authenticated by `Authorization: Bearer rh-...`."""
    result.setdefault("paths", {}).update(PATHS)
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components.setdefault("securitySchemes", {})["apiKey"] = {"type": "http", "scheme": "bearer", "description": "An API key, rh-..."}
    return result
