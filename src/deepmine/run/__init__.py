"""What every command shares about one run: the checks made before it exists (`checks`), its
wiring (`build`), fitting and testing (`fit`), resuming (`resume`), what it records (`records`),
its name and description (`names`), what it prints (`console`), one-line errors (`errors`), how a
Hydra command is run from the CLI (`hydra_app`) and a DDP rank's entry point (`rank`)."""
