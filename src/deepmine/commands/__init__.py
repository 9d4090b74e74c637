"""One module per `deepmine <command>`, each with `run(args) -> int` that parses its own
arguments; `deepmine.cli` only dispatches. No command imports another: what they share lives in
`deepmine.run` (one run) and the rooms below it."""
