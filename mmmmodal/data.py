"""`mmmmodal data ...`: the paper's data pipelines, converters, and the synthetic task.

Sub-commands (each with --help):
  synthetic           shapes-and-beeps task: train/test/alignment JSONL + media
  audio-instructions  ASR pseudo-labels -> multi-turn audio chats (+ Malay)
  visual-qa           image + caption -> multi-turn chats (+ Malay)
  relationship        "What is related between picture 1 and audio 1?" rows
  combine             concatenate 2-4 single-media records into multi-media ones
  convert             paper records -> training rows (TRL's vision form: messages + images)
Generation runs append to --out and skip ids already there: rerun the same command to resume.
A row that fails after its retries goes to OUT.failed.jsonl with its error, and the run goes on; the exit status
is then 1, and a rerun of the same command retries the failed and the missing rows only.
"""

import argparse
import json
import logging
from pathlib import Path

from processing.synthetic_task import TaskConfig

from .cli import add_dataclass_arguments, dataclass_from_args

logger = logging.getLogger(__name__)

EPILOG = """examples:
  mmmmodal data synthetic --out data/shapes --train 2000 --test 200 --alignment 1000 --image-size 48
  mmmmodal data audio-instructions --audio clips/ --asr openai/whisper-small --llm Qwen/Qwen2.5-0.5B-Instruct \\
      --translator facebook/nllb-200-distilled-600M --translator-target-lang zsm_Latn --turns 3 \\
      --out data/audio_chat.jsonl
  mmmmodal data visual-qa --captions captions.jsonl --openai-base-url http://127.0.0.1:8000/v1 \\
      --openai-model my-llm --max-workers 16 --translate-with-llm --out data/visual_qa.jsonl
  mmmmodal data relationship --images captions.jsonl --audios data/audio_chat.asr.jsonl --llm PATH \\
      --pairs-per-kind 500 --out data/relationship.jsonl
  mmmmodal data combine --images data/visual_qa.jsonl --audios data/audio_chat.jsonl --seed 0 --out data/combined.jsonl
  mmmmodal data convert --input data/combined.jsonl data/relationship.jsonl --languages en,ms --out data/train.jsonl
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones (None / False) and those of flags that take no value."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _example(command: str) -> str:
    """The EPILOG example(s) of one sub-command, as its own --help epilog."""
    lines, keep = [], False
    for line in EPILOG.splitlines()[1:]:
        if line.startswith("  mmmmodal"):
            keep = line.startswith(f"  mmmmodal data {command} ")
        if keep:
            lines.append(line)
    return "example:\n" + "\n".join(lines)


def _dump(stats: dict) -> int:
    print(json.dumps(stats, indent=2, ensure_ascii=False))
    return 0


def _dump_run(stats: dict) -> int:
    """The summary of a generation run. Exit status 1 when rows failed: the run went on, and the pipeline has
    logged where their errors are."""
    _dump(stats)
    return 1 if stats["failed"] or stats.get("asr", {}).get("failed") else 0


def _read(paths) -> list:
    from processing.jsonl_io import read_jsonl

    return [row for path in paths for row in read_jsonl(path)]


def _add_generator_args(p):
    g = p.add_argument_group("instruction LLM (one of --llm or --openai-base-url)")
    g.add_argument("--llm", help="local folder or hub id of a causal LM (transformers)")
    g.add_argument("--openai-base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--openai-model", help="model name sent to the endpoint")
    g.add_argument("--openai-api-key", default="EMPTY", help="API key (default: EMPTY, for local servers)")
    g.add_argument("--max-workers", type=int, default=8, help="concurrent requests to the endpoint")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    g.add_argument("--max-retries", type=int, default=3, help="retries per request (exponential backoff)")
    g.add_argument("--max-new-tokens", type=int, default=512, help="cap per reply (and per translation)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (local LLM: 0 = greedy)")
    g.add_argument("--batch-size", type=int, default=4, help="local LLM generation batch size")
    t = p.add_argument_group("Malay translation (content_ms); none given -> no translation")
    t.add_argument("--translator", help="seq2seq translation model (Marian, T5, NLLB, ...)")
    t.add_argument("--translator-prefix", default="", help="text put before each input, e.g. 'terjemah ke Melayu: '")
    t.add_argument("--translator-target-lang", help="target language token, e.g. zsm_Latn for NLLB")
    t.add_argument("--translate-with-llm", action="store_true", help="translate with the instruction LLM")
    p.add_argument("--chunk-size", type=int, default=8, help="rows in flight per step (a crash loses at most these)")
    p.add_argument("--max-consecutive-failures", type=int, default=32,
                   help="stop after this many failed rows in a row (a dead endpoint, a wrong model name); 0: never")


def _generator(args):
    from processing.generators import OpenAIGenerator, TransformersGenerator

    if bool(args.llm) == bool(args.openai_base_url):
        raise ValueError("Instruction LLM: expected exactly one of --llm or --openai-base-url, found "
                         f"{'both' if args.llm else 'neither'}.")
    if args.openai_base_url:
        if not args.openai_model:
            raise ValueError("--openai-base-url needs --openai-model (the model name the server knows).")
        return OpenAIGenerator(args.openai_base_url, args.openai_model, args.openai_api_key, args.max_workers,
                               args.timeout, args.max_retries, args.max_new_tokens, args.temperature)
    return TransformersGenerator(args.llm, args.max_new_tokens, args.batch_size, do_sample=args.temperature > 0,
                                 temperature=args.temperature)


def _translator(args, generator):
    from processing.generators import LLMTranslator
    from processing.translate import Seq2SeqTranslator

    if args.translator:
        return Seq2SeqTranslator(args.translator, args.translator_prefix, args.translator_target_lang,
                                 max_new_tokens=args.max_new_tokens)
    if args.translate_with_llm:
        return LLMTranslator(generator)
    logger.warning("No --translator or --translate-with-llm: rows get no content_ms.")
    return None


def _audio_files(paths) -> list:
    from processing.markers import media_kind

    files = []
    for path in map(Path, paths):
        files += sorted(f for f in path.rglob("*") if media_kind(f.name) == "audio") if path.is_dir() else [path]
    return files


def run_audio_instructions(args) -> int:
    from processing.asr import PseudoLabeller, pseudo_label
    from processing.audio_instructions import audio_instructions

    transcripts, asr_stats = args.transcripts, None
    if transcripts is None:
        if not (args.audio and args.asr):
            raise ValueError("audio-instructions: expected --transcripts, or --audio with --asr; found neither.")
        transcripts = args.asr_out or str(Path(args.out).with_suffix("")) + ".asr.jsonl"
        labeller = PseudoLabeller(args.asr, args.asr_batch_size, language=args.asr_language)
        asr_stats = pseudo_label(_audio_files(args.audio), transcripts, labeller, args.min_score,
                                 args.max_compression_ratio, args.chunk_size, args.max_consecutive_failures)
    generator = _generator(args)
    stats = audio_instructions(_read([transcripts]), args.out, generator, args.turns, _translator(args, generator),
                               args.min_score, args.max_compression_ratio, args.chunk_size,
                               args.max_consecutive_failures)
    if asr_stats is not None:
        stats["asr"] = asr_stats
    return _dump_run(stats)


def run_visual_qa(args) -> int:
    from processing.visual_qa import visual_qa

    generator = _generator(args)
    return _dump_run(visual_qa(_read(args.captions), args.out, generator, args.turns, _translator(args, generator),
                               args.chunk_size, args.max_consecutive_failures))


def run_relationship(args) -> int:
    from processing.relationship import relationship

    generator = _generator(args)
    images, audios = _read(args.images or []), _read(args.audios or [])
    return _dump_run(relationship(images, audios, args.out, generator, args.kinds.split(","), args.pairs_per_kind,
                                  _translator(args, generator), args.seed, args.chunk_size,
                                  args.max_consecutive_failures))


def run_combine(args) -> int:
    from processing.combine import combine
    from processing.jsonl_io import write_jsonl

    rows, stats = combine(_read(args.images), _read(args.audios), args.rows, args.seed, args.p_image,
                          args.min_rows, args.max_rows)
    write_jsonl(args.out, rows)
    return _dump(stats)


def run_convert(args) -> int:
    from processing.convert import convert_records, load_records
    from processing.jsonl_io import write_jsonl

    rows, stats = [], {"records": 0, "rows": 0, "skipped": 0}
    for path in args.input:
        media_root = args.media_root or Path(path).resolve().parent
        part, part_stats = convert_records(load_records(path), args.languages.split(","), media_root,
                                           not args.no_check_files, args.skip_bad_rows)
        rows += part
        stats = {k: stats[k] + part_stats[k] for k in stats}
    write_jsonl(args.out, rows)
    return _dump(stats)


def run_synthetic(args) -> int:
    from processing.synthetic_task import write_synthetic

    try:
        cfg = dataclass_from_args(TaskConfig, args)
    except ValueError as error:
        raise SystemExit(f"mmmmodal data synthetic: {error}") from error
    return _dump(write_synthetic(args.out, args.train, args.test, args.seed, cfg, args.alignment))


def _register_generation(sub, fmt):
    p = sub.add_parser("audio-instructions", formatter_class=fmt, epilog=_example("audio-instructions"), help="ASR pseudo-labels -> audio chats",
                       description="Transcribe clips with an ASR model (kept when mean token log-prob >= "
                                   "--min-score and gzip compression ratio <= --max-compression-ratio), then grow "
                                   "multi-turn chats from each transcript and translate them to Malay.")
    p.add_argument("--audio", nargs="+", help="audio files or folders (searched recursively)")
    p.add_argument("--asr", help="ASR checkpoint (Whisper hub id or local folder)")
    p.add_argument("--asr-batch-size", type=int, default=8)
    p.add_argument("--asr-language", help="Whisper language code (e.g. ms, en) for transcription and scoring; "
                                          "default: detected (then the score is taken without a language token)")
    p.add_argument("--asr-out", help="ASR rows JSONL (default: OUT with .asr.jsonl)")
    p.add_argument("--transcripts", help="existing ASR rows JSONL; skips transcription")
    p.add_argument("--min-score", type=float, default=-0.5, help="min mean token log-prob of a transcript")
    p.add_argument("--max-compression-ratio", type=float, default=2.4, help="max gzip ratio (repetition filter)")
    p.add_argument("--turns", type=int, default=3, help="user/assistant pairs per chat")
    p.add_argument("--out", required=True, help="output JSONL (appended; reruns resume)")
    _add_generator_args(p)
    p.set_defaults(func=run_audio_instructions)
    p = sub.add_parser("visual-qa", formatter_class=fmt, epilog=_example("visual-qa"), help="image + caption -> chats",
                       description="Grow multi-turn question/answer chats about images from their captions.")
    p.add_argument("--captions", nargs="+", required=True, help="JSONL rows {filename: [image], caption}")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--out", required=True, help="output JSONL (appended; reruns resume)")
    _add_generator_args(p)
    p.set_defaults(func=run_visual_qa)
    p = sub.add_parser("relationship", formatter_class=fmt, epilog=_example("relationship"), help="what relates two media items",
                       description="Pair captioned images / transcribed clips and ask the LLM the paper's "
                                   "'What is related between ...' questions.")
    p.add_argument("--images", nargs="+", help="JSONL rows with one image filename and a caption")
    p.add_argument("--audios", nargs="+", help="JSONL rows with one audio filename and a transcript")
    p.add_argument("--kinds", default="image-image,audio-audio,audio-image")
    p.add_argument("--pairs-per-kind", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output JSONL (appended; reruns resume)")
    _add_generator_args(p)
    p.set_defaults(func=run_relationship)


def _register_offline(sub, fmt):
    p = sub.add_parser("combine", formatter_class=fmt, epilog=_example("combine"), help="2-4 single-media records -> one multi-media record",
                       description="Paper §4.5: each output row draws 2-4 source rows, image with probability "
                                   "--p-image else audio, without reuse; filenames and conversations concatenated.")
    p.add_argument("--images", nargs="+", required=True, help="image records JSONL")
    p.add_argument("--audios", nargs="+", required=True, help="audio records JSONL")
    p.add_argument("--rows", type=int, help="rows to make (default: until the sources run out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--p-image", type=float, default=0.6)
    p.add_argument("--min-rows", type=int, default=2)
    p.add_argument("--max-rows", type=int, default=4)
    p.add_argument("--out", required=True)
    p.set_defaults(func=run_combine)
    p = sub.add_parser("convert", formatter_class=fmt, epilog=_example("convert"), help="paper records -> training rows",
                       description="Paper records (filename, conversations/chat, <image>/<audio> markers) -> "
                                   "training rows {messages, images} with absolute media paths.")
    p.add_argument("--input", nargs="+", required=True, help="records (.jsonl, or .json holding a list)")
    p.add_argument("--out", required=True, help="training rows JSONL")
    p.add_argument("--languages", default="en", help="en, ms or en,ms (one row per language)")
    p.add_argument("--media-root", help="folder relative filenames resolve against (default: the input's folder)")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip bad records with a warning, and count them")
    p.add_argument("--no-check-files", action="store_true", help="do not check that media files exist")
    p.set_defaults(func=run_convert)
    p = sub.add_parser("synthetic", formatter_class=fmt, epilog=_example("synthetic"), help="built-in shapes-and-beeps task",
                       description="Write train.jsonl, test.jsonl (and alignment.jsonl) with media under OUT/media; "
                                   "paths are absolute. Train uses --seed, test --seed + 1, alignment --seed + 2.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--alignment", type=int, default=0, help="stage-1 caption/description rows")
    p.add_argument("--seed", type=int, default=0)
    add_dataclass_arguments(p, TaskConfig, "task (processing.synthetic_task.TaskConfig)")
    p.set_defaults(func=run_synthetic)


def register(subparsers):
    fmt = _HelpFormatter
    parser = subparsers.add_parser("data", help="data pipelines, converters and the synthetic task",
                                   description=__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="data_command", required=True)
    _register_generation(sub, fmt)
    _register_offline(sub, fmt)
    return parser
