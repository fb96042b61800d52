from dreamtalk.cli import main

raise SystemExit(main())
