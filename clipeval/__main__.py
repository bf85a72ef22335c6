from clipeval.cli import main

raise SystemExit(main())
