"""``python -m streamer`` is the ``streamer`` command; each ``run --workers N`` worker is one."""

from streamer.commands import main

raise SystemExit(main())
