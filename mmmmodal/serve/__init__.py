"""`mmmmodal serve`: an OpenAI-compatible chat-completions server for MMMModal checkpoints.

    mmmmodal serve ./my-checkpoint --port 8000 --api-key "$KEY" --allowed-local-media-path ./media
    # then, with the official client:
    # OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY).chat.completions.create(model="my-checkpoint", ...)

Requests speak the OpenAI protocol: `text`, `image_url` (http(s) URL, `data:` URI, or a local path under
`--allowed-local-media-path`) and `input_audio` (`{"data": <base64>, "format": "wav"}`) content parts, plus
`audio_url` as an extension; multi-turn; `stream`, `n`, `seed`, `stop`, `max_completion_tokens`,
`stream_options.include_usage`. Media are fetched and decoded under the media policy (`media`), fields are
checked and the conversation encoded by `request`, and requests that arrive together (within `--batch-wait-ms`)
are answered by one left-padded `generate` call (`batching`). Every error is OpenAI's error JSON
(`{"error": {"message", "type", "param", "code"}}`); bad input is a 400 with the reason, and the server goes on.
A client that disconnects cancels its generation.

The modules, one job each: `app` (the FastAPI app: routes, API key, error handlers), `request` (a request body ->
checked fields -> model inputs), `responses` (OpenAI's completion, chunk and error objects), `batching` (batched
`generate` with per-row sampling and stop strings), `media` (the media policy: where bytes may come from and how big
they may be; the vLLM plugin decodes audio with it too) and `cli` (`mmmmodal serve`'s flags). Importing this
package imports none of them.

Why not `transformers serve --trust-remote-code`: in transformers 5.23 it picks the modality and the model class
from its built-in name mappings (`MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES`), which the public `Auto*.register` APIs
do not fill, so a remote-code model is not recognised without editing a private dict; its sequential path answers
one request at a time (continuous batching is text-only there); and a corrupt media part ends as HTTP 500.
"""
