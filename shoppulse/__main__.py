from shoppulse.cli import main

if __name__ == "__main__":  # not when a spawned child (the refresh process) imports it
    main()
