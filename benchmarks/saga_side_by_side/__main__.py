from benchmarks.saga_side_by_side.orchestrate import main

raise SystemExit(main())
