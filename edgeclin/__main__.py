from edgeclin.cli import main

main()
