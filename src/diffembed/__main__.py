from diffembed.cli.app import main

main()
