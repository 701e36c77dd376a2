"""`python -m t2lcli` is the same as the `t2l` console script."""

from t2lcli.fasthelp import main

if __name__ == "__main__":
    main()
