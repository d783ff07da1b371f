from shoppulse.cli import main

main()
