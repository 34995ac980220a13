from plano_fast.cli import main

raise SystemExit(main())
