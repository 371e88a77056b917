"""The packaged recipes: `hyflow train quickstart` finds configs/quickstart.yaml here."""
