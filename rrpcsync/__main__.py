from rrpcsync.cli.main import main

main()
