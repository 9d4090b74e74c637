"""Where a run came from and what it may reveal: lineage (git, environment), masking of secrets,
and the trust of `_target_`s in a recorded config."""
