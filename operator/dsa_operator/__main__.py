from dsa_operator.cli import main

main()
