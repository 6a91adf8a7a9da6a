from rrpcsync.cli import main

main()
