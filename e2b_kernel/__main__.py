"""Launch the E2B Python kernel: ``python -m e2b_kernel -f CONNECTION_FILE``."""

from e2b_kernel.kernel import main

if __name__ == "__main__":
    main()
