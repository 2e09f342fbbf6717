from unissl.cli import main

raise SystemExit(main())
