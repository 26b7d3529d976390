"""Download the brotli 1.2.1 source archive from PyPI, check its sha256, and install the four bundled texts."""

NAME = "install-texts"
HELP = "install the bundled Canterbury texts into the environment"


def add_arguments(p):
    p.add_argument("--archive", default=None, help="use this brotli-1.2.1.tar.gz instead of downloading it")
    p.add_argument("--dest", default=None, help="target folder (default: <venv>/share/layerscope/canterbury)")


def run(args) -> int:
    from analysis.texts import install_corpus

    print(install_corpus(args.dest, archive=args.archive))
    return 0
