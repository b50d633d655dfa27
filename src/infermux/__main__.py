from infermux.cli.main import main

main()
