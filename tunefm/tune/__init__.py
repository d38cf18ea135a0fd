"""Everything that talks to Ray: search settings, the search and its resume, a run's
life, the trial entry points (solo `trial`, fused `member`), the executors and their
coordinator, placement, callbacks, the cluster, checkpoint retention, the test-set
evaluation after a search, `one_machine` (the node provider behind cluster/local.yaml),
and `ray_internals`, the one module that uses Ray's or Tune's private modules, attributes
and on-disk formats.

May import: Ray, torch, pandas, and every layer below: `tunefm.study` and
`tunefm.searchers`, `tunefm.run`, `tunefm.engine`. Never `tunefm.analysis` or the CLI.
"""
