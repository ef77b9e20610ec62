"""schema.pbtxt: the raw example format. SCHEMA_PATH locates it inside the installed package."""
import os

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.pbtxt")
