from medrov.cli import main

main()
