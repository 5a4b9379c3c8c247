"""The run report: reading a run (summary), drawing it (charts), laying it out (page); the
`report` command writes it."""
