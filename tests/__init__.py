"""codeground tests (a package so `tests.bed.fixtures` imports as a pytest plugin)."""
