"""`python -m nornir_k8sha` runs the CLI."""

from nornir_k8sha.cli import main

if __name__ == "__main__":
    main()
