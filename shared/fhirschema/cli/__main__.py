import sys

from fhirschema.cli import main

sys.exit(main())
