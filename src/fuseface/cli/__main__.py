from fuseface.cli.main import main

main()
