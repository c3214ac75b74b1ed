"""`mmmmodal serve`'s flags: the server's limits, the media policy, loading; then the app under uvicorn."""

import logging
import os

from mmmmodal.loading import add_loading_arguments, load_checkpoint
from .app import DEFAULT_MAX_NEW_TOKENS, build_app
from .batching import Batcher
from .media import MediaPolicy

logger = logging.getLogger(__name__)

API_KEY_ENV = "MMMMODAL_API_KEY"


def _number(kind, minimum):
    def parse(text):
        value = kind(text)
        if value < minimum:
            raise ValueError(text)
        return value

    parse.__name__ = f"{kind.__name__} >= {minimum}"  # argparse names it in its error
    return parse


def register(subparsers):
    parser = subparsers.add_parser("serve", help="Serve a checkpoint over the OpenAI chat-completions protocol.")
    parser.add_argument("checkpoint", help="A folder written by save_pretrained, or a hub repository id.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="Name reported in responses (default: the checkpoint).")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"Require `Authorization: Bearer KEY` on /v1 routes (default: ${API_KEY_ENV}; none).")
    parser.add_argument("--max-new-tokens", type=_number(int, 1), default=DEFAULT_MAX_NEW_TOKENS,
                        help="Answer length when a request gives no max_completion_tokens (default: %(default)s).")
    parser.add_argument("--max-batch-size", type=_number(int, 1), default=8, help="(default: %(default)s)")
    parser.add_argument("--batch-wait-ms", type=_number(float, 0), default=10.0,
                        help="How long the first request of a batch waits for others to join it (default: %(default)s).")
    parser.add_argument("--max-request-mb", type=_number(float, 0.001), default=64.0,
                        help="Largest request body (default: %(default)s).")
    parser.add_argument("--max-media-per-request", type=_number(int, 1), default=32,
                        help="Most images + audio clips per request (default: %(default)s).")
    _add_media_arguments(parser)
    add_loading_arguments(parser)
    parser.set_defaults(func=_main)


def _add_media_arguments(parser):
    group = parser.add_argument_group("media policy (what image_url / audio_url / input_audio may read)")
    group.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                       help="Read local paths and file:// URLs, but only under DIR (symlinks and .. resolved first). "
                            "Default: local files are refused.")
    group.add_argument("--allowed-media-domains", nargs="+", default=(), metavar="HOST",
                       help="Fetch URLs (and follow redirects) only to these hosts. Default: any public host.")
    group.add_argument("--allowed-media-networks", nargs="+", default=(), metavar="CIDR",
                       help="Non-public networks URLs may reach anyway (e.g. 10.0.0.0/8). Default: loopback, private, "
                            "link-local, multicast and reserved addresses are refused.")
    group.add_argument("--media-max-redirects", type=_number(int, 0), default=3,
                       help="Redirects followed per URL, each hop checked (default: %(default)s).")
    group.add_argument("--media-fetch-timeout", type=_number(float, 0.001), default=20.0,
                       help="Seconds per URL fetch, transfer included (default: %(default)s).")
    group.add_argument("--media-max-mb", type=_number(float, 0.001), default=25.0,
                       help="Most bytes read from one media source, in MiB (default: %(default)s).")
    group.add_argument("--media-max-pixels", type=_number(int, 1), default=25_000_000,
                       help="Most pixels of one image (default: %(default)s).")
    group.add_argument("--media-max-audio-seconds", type=_number(float, 0.001), default=None,
                       help="Longest audio clip (default: the processor's max_audio_seconds).")


def media_policy(args, processor) -> MediaPolicy:
    return MediaPolicy(
        local_root=args.allowed_local_media_path,
        domains=tuple(args.allowed_media_domains),
        networks=tuple(args.allowed_media_networks),
        max_bytes=int(args.media_max_mb * 2**20),
        max_redirects=args.media_max_redirects,
        timeout_s=args.media_fetch_timeout,
        max_pixels=args.media_max_pixels,
        max_audio_seconds=args.media_max_audio_seconds or getattr(processor, "max_audio_seconds", 300.0),
    )


def _main(args) -> int:
    import uvicorn

    try:
        policy = media_policy(args, None)  # bad flags fail before the model loads
    except ValueError as error:
        raise SystemExit(f"mmmmodal serve: {error}") from None
    model, processor = load_checkpoint(args.checkpoint, args.device, args.dtype, args.trust_remote_code)
    policy = media_policy(args, processor)
    batcher = Batcher(model, processor, args.max_batch_size, args.batch_wait_ms / 1000)
    name = args.model_name or args.checkpoint.rstrip("/").split("/")[-1]
    app = build_app(model, processor, name, batcher, policy, args.max_new_tokens, args.api_key,
                    args.max_media_per_request, int(args.max_request_mb * 2**20))
    logger.info(f"Serving {name!r} on http://{args.host}:{args.port}/v1 (API key: {'yes' if args.api_key else 'no'}; "
                f"local media: {policy.local_root or 'refused'}; URL fetches: "
                f"{', '.join(policy.domains) or 'any public host'}"
                f"{'; plus networks ' + ', '.join(map(str, policy.networks)) if policy.networks else ''}).")
    uvicorn.run(app, host=args.host, port=args.port, log_level=logging.getLevelName(logger.getEffectiveLevel()).lower())
    return 0
