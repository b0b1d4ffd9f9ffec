from crossnet.cli.main import main

main()
