from cmar.cli import main

raise SystemExit(main())
