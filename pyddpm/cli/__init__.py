"""The command-line layer: the only part of pyddpm that parses arguments. Each module is one console script
(``main(argv) -> exit code``) that orchestrates the library; the library never imports this package."""
