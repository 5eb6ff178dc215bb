"""`python -m tests.chaos --seed N --queries N --users N --duration S`: one chaos run; exits 1 on any violation."""
import sys

from tests.chaos.run import main

sys.exit(main())
