"""`python -m preprocessing.synthetic_ct`: see cli.py."""
from preprocessing.synthetic_ct.cli import main

main()
