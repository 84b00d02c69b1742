"""The command-line layer: the only part of pyddpm that parses arguments. Each module is one console script
(``main(argv) -> exit code``) that orchestrates the library; the library never imports this package."""

from .. import baselines  # noqa: E402,F401  (registers the course's flow and VAE, so every command loads their runs)
