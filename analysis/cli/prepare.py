"""De-quantise the bundled GGUF model once into ``cache/models`` so the first load in the dashboard is fast."""

NAME = "prepare"
HELP = "convert the bundled model to an fp32 checkpoint in cache/ (done on first use otherwise)"


def add_arguments(p):
    p.add_argument("--model", default="default", help="'default' or a .gguf file")


def run(args) -> int:
    from pathlib import Path

    from analysis.model.loading import converted_gguf_folder, default_gguf_path

    gguf = default_gguf_path() if args.model == "default" else Path(args.model)
    print(converted_gguf_folder(gguf, say=print))
    return 0
