"""Process-level concerns of a run: seeding, interrupts, process state, DDP ranks, the start-up
timeline, checkpoints and deepmine's own Lightning callbacks. Nothing here knows a task."""
