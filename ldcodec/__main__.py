"""``python -m ldcodec`` runs the command line."""

from ldcodec.cli.main import main

main()
