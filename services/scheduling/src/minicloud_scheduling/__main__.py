from minicloud_scheduling.app import SERVICE, build
from minicloud_shared.runtime.entrypoint import main

raise SystemExit(main(SERVICE, build))
