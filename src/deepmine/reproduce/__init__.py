"""Paper reproduction, split by job: `claims` (the claims of experiments/ and their checks),
`claim_run` (`deepmine reproduce <claim>` and `--all`: a claim's seeds as one recorded sweep,
judged against the published number), `report` (its Markdown and REPRODUCTION.md), `rerun`
(`deepmine reproduce run <run id>`: a recorded run re-executed and diffed) and `plots`."""
